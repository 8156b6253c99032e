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
    # BEGIN SOLUTION: o_j = v_j W_O, then W_U's columns of the sample tokens
    # Hint 1: two steps: what head h writes into the residual stream when it attends to key
    #   j, then how W_U reads that at each sample token. Which keys count, and which of
    #   W_U's columns?
    # Hint 2: the keys j >= 1 (leave BOS out of v), each through its head's W_O: (N, n, H,
    #   D). Each example's own sample tokens, those after BOS, pick W_U's columns: (D, N,
    #   n). Contract D, keeping example, head, key and token, in that order; float64.
    # Hint 3: `v = cache[f"blocks.{layer}.attn.hook_v"][:, 1:].astype(np.float64)`,
    #   `out = np.einsum("njhe,hed->njhd", v, W_O)`, `W_sample = W_U[:, tokens[:, 1:]]`,
    #   then `return np.einsum("njhd,dnt->nhjt", out, W_sample)`.
    v = cache[f"blocks.{layer}.attn.hook_v"][:, 1:].astype(np.float64)     # (N, n, H, E)
    W_O = np.asarray(model.params[f"blocks.{layer}.attn.W_O"], dtype=np.float64)
    out = np.einsum("njhe,hed->njhd", v, W_O)                              # (N, n, H, D)
    W_U = np.asarray(model.params["unembed.W_U"], dtype=np.float64)
    W_sample = W_U[:, tokens[:, 1:]]                                       # (D, N, n)
    return np.einsum("njhd,dnt->nhjt", out, W_sample)
    # END SOLUTION


def copying_score(model, tokens):
    """tokens (N, 1 + n), BOS + n distinct tokens -> (n_layers, n_heads) in [-1, 1]."""
    _, cache = model.run_with_cache(tokens)
    n = tokens.shape[1] - 1
    scores = np.zeros((model.config.n_layers, model.config.n_heads))
    for layer in range(model.config.n_layers):
        impact = direct_logit_impact(model, cache, layer, tokens)          # (N, H, n, n)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].astype(np.float64)
        # BEGIN SOLUTION: raise r, key weights w, then A, O and the score
        # Hint 1: three steps: the raise r (which comes first, the mean-subtraction or the
        #   ReLU?), one weight per key from the pattern (N, H, query, key), then A and O per
        #   example. A key's weight is the attention it receives.
        # Hint 2: mean-subtract the impact over the sample tokens t (its last axis), then
        #   ReLU. w_j sums the pattern over its queries (axis 2), keys from 1 on, to line up
        #   with the impact's keys. r[..., j, t = j] is the diagonal of r's last two axes: A
        #   sums w times it over j; O sums w times the rest of each row, over n - 1. Then
        #   (A - O) / (A + O), its mean over the examples; 0 / 0 stays NaN (np.errstate
        #   silences numpy's warning).
        # Hint 3: `raised = np.maximum(impact - impact.mean(-1, keepdims=True), 0.0)`,
        #   `weight = pattern.sum(2)[:, :, 1:]`,
        #   `on_attended = np.diagonal(raised, axis1=-2, axis2=-1)`,
        #   `attended = (weight * on_attended).sum(-1)`,
        #   `other = (weight * (raised.sum(-1) - on_attended)).sum(-1) / (n - 1)`, and under
        #   `with np.errstate(invalid="ignore", divide="ignore"):`,
        #   `scores[layer] = ((attended - other) / (attended + other)).mean(0)`.
        raised = np.maximum(impact - impact.mean(-1, keepdims=True), 0.0)
        weight = pattern.sum(2)[:, :, 1:]                                  # (N, H, n)
        on_attended = np.diagonal(raised, axis1=-2, axis2=-1)              # (N, H, n)
        attended = (weight * on_attended).sum(-1)
        other = (weight * (raised.sum(-1) - on_attended)).sum(-1) / (n - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[layer] = ((attended - other) / (attended + other)).mean(0)
        # END SOLUTION
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
