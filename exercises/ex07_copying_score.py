"""Exercise 07: the copying score, read through the direct logit path.

Paper: "Key Concepts: Induction Heads" (copying: "the head's output increases the logit
corresponding to the attended-to token") and method "(3) Head activation evaluators:
Copying". A head can only copy if what it writes, read straight by the unembedding, raises
the token it looks at more than other tokens.

What to compute, for a model without LayerNorm (as ours), on BOS + n distinct random tokens:
  1. direct_logit_impact: what head h writes when it attends to key j is o_j = v_j W_O
     (v_j from the cache, b_V included); read by W_U it changes the logits by o_j W_U.
     Keep the n sample tokens' logits: impact[e, h, j, t] = o_j . W_U[:, tokens[e, 1 + t]]
     for keys j >= 1 (BOS is no sample token).
  2. copying_score: mean-subtract the impact over the n tokens t and ReLU it: the raise
     r[e, h, j, t]. Weight each key by how much attention it gets, w_j = sum_i pattern[i, j]
     over all queries i. Then, per example,

         A = sum_j w_j r[j, t = j]                              raise on the attended token
         O = sum_j w_j (sum_t r[j, t] - r[j, t = j]) / (n - 1)  raise on an average other
         score = (A - O) / (A + O)     in [-1, 1]: 1 copies, 0 no preference

     and then the mean over examples. A head that writes nothing W_U reads gets
     0 / 0 = NaN: that is the right answer, leave it.

Shapes: tokens (N, 1 + n). direct_logit_impact(model, cache, layer, tokens) ->
        (N, H, n, n) [example, head, key j - 1, sample token t].
        copying_score(model, tokens) -> (n_layers, n_heads).

cache[f"blocks.{l}.attn.hook_v"] is (N, T, H, E); model.params["blocks.{l}.attn.W_O"] is
(H, E, D), "unembed.W_U" (D, V).

Run: python -m exercises.ex07_copying_score    Check: make exercise N=7
Hints, one step at a time: python -m exercises.hint 7 (then --step 2)
"""
import numpy as np

import circuits
from circuits import HeadScores, classify_heads, repeated_random_tokens
from exercises import common


def direct_logit_impact(model, cache, layer, tokens):
    """-> (N, H, n, n): head output from key j >= 1, read by W_U at the n sample tokens."""
    raise NotImplementedError(
        "exercise 07: o_j = v_j W_O, then W_U's columns of the sample tokens")


def copying_score(model, tokens):
    """tokens (N, 1 + n), BOS + n distinct tokens -> (n_layers, n_heads) in [-1, 1]."""
    _, cache = model.run_with_cache(tokens)
    n = tokens.shape[1] - 1
    scores = np.zeros((model.config.n_layers, model.config.n_heads))
    for layer in range(model.config.n_layers):
        impact = direct_logit_impact(model, cache, layer, tokens)          # (N, H, n, n)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].astype(np.float64)
        raise NotImplementedError(
            'exercise 07: raise r, key weights w, then A, O and the score')
    return scores


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model = run.model()
    tokens = repeated_random_tokens(10, 40, 1, run.token_counts, seed=0)
    copying = copying_score(model, tokens)
    engine = circuits.copying_score(model, n_examples=10, length=40,   # the same tokens
                                    token_counts=run.token_counts, seed=0)
    if np.allclose(copying, engine, rtol=1e-4, atol=1e-6, equal_nan=True):
        print("ok     your scores are circuits.copying_score's on the same tokens")
    else:
        gap = np.abs(copying - engine)
        gap[np.isnan(copying) & np.isnan(engine)] = 0.0
        gap[np.isnan(gap)] = np.inf                              # NaN on one side only
        l, h = np.unravel_index(np.argmax(gap), gap.shape)
        print(f"WRONG: your scores differ from circuits.copying_score's on the same tokens, "
              f"most at head {l}.{h} (yours {copying[l, h]:+.2f}, circuits' {engine[l, h]:+.2f})")
    library = HeadScores.of_run(run)                 # the tools' scores of the same model
    prefix = library.prefix_matching
    classes = classify_heads(prefix, copying, library.previous_token)   # the tools' one rule
    names = [f"{l}.{h}" for l in range(model.config.n_layers) for h in range(model.config.n_heads)]
    for name, c, p, kind in zip(names, copying.ravel(), prefix.ravel(), classes.ravel()):
        print(f"head {name}: copying {c:+.2f}   prefix matching {p:.2f}   {kind}")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, copying.ravel(), 0.4, label="copying")
    ax.bar(x + 0.2, prefix.ravel(), 0.4, label="prefix matching")
    ax.set_xticks(x, [f"head {n}" for n in names])
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylim=(-1, 1), title="an induction head both prefix-matches and copies")
    ax.legend()
    common.save(fig, "ex07_copying_score")
