"""Exercise 12: pattern-preserving ablation and the in-context-learning score (Argument 3).

Paper: "Key Concepts" ("In-context learning score: the loss of the 500th token in the
context minus the average loss of the 50th token"), Argument 3 ("when we directly knock
out induction heads at test-time in small models, the amount of in-context learning
greatly decreases") and method "(2) Per-token losses (attention head ablations)": the
pattern-preserving ablation removes a head's output from every later head's values but
keeps every attention pattern as it was in the clean run.

What to compute:
  1. icl_score(losses, early, late, half_window): the mean loss at context index `late`
     minus the mean loss at index `early`. losses[:, i - 1] is the loss at context index
     i (token i predicted from the i tokens before it); to tame noise, average over the
     indices index - half_window .. index + half_window (clipped to 1 .. n_ctx - 1) and over
     the sequences. Negative: later tokens are easier, the model learns in context.
  2. pattern_preserving_losses(model, tokens, layer, head): run the model once and record
     every layer's attention pattern; run it again with that head's output zeroed and
     every pattern replayed -> per-token losses.
  3. icl_change(model, tokens, early, late, half_window): for every head, icl_score with
     the head ablated minus icl_score of the clean model. Positive: the head was doing
     in-context learning.

Shapes: losses (N, T-1) -> float. pattern_preserving_losses -> (N, T-1).
        icl_change -> (n_layers, n_heads).

model.per_token_loss(tokens, hooks=ablate_heads([(layer, head)])) runs the model with a head
zeroed (minitransformer.interventions): a full ablation, every later pattern recomputed. Compare it with yours on head 0.0
and explain the difference (exercise 10 tells you why).

Run: python -m exercises.ex12_ablation_icl    Check: make exercise N=12
Hints, one step at a time: python -m exercises.hint 12 (then --step 2)
"""
import numpy as np

from circuits import context_indices
from exercises import common
from minitransformer.interventions import ablate_heads, combine, replay


def icl_score(losses, early, late, half_window=1):
    """losses (N, T-1) -> mean loss around index `late` minus around index `early`."""
    # BEGIN SOLUTION: a windowed mean at each index, then the difference
    # Hint 1: context index i is column i - 1 of losses, and n_ctx is `losses.shape[1] + 1`.
    #   Clip the window's ends, not its centre.
    # Hint 2: around an index: `lo, hi = max(1, index - half_window), min(n_ctx - 1, index +
    #   half_window)`, then `losses[:, lo - 1:hi].mean()`; late minus early, as a float.
    n_ctx = losses.shape[1] + 1

    def around(index):
        lo, hi = max(1, index - half_window), min(n_ctx - 1, index + half_window)
        return losses[:, lo - 1:hi].mean()                  # context indices lo .. hi
    return float(around(late) - around(early))
    # END SOLUTION


def pattern_preserving_losses(model, tokens, layer, head):
    """-> (N, T-1) per-token losses with head (layer, head) zeroed, every pattern replayed."""
    # BEGIN SOLUTION: record the clean patterns, replay them with the head zeroed
    # Hint 1: `model.run_with_cache(tokens)` -> (logits, cache) records every pattern: the
    #   cache entries whose names end in "hook_pattern". `replay(cache, names)` turns them
    #   into hooks that put them back; `combine` joins those with `ablate_heads`.
    # Hint 2: `model.per_token_loss(tokens, hooks=combine(replay(cache, patterns),
    #   ablate_heads([(layer, head)])))` with `patterns = [name for name in cache if
    #   name.endswith("hook_pattern")]`.
    _, cache = model.run_with_cache(tokens)
    patterns = [name for name in cache if name.endswith("hook_pattern")]
    return model.per_token_loss(tokens, hooks=combine(replay(cache, patterns),
                                                      ablate_heads([(layer, head)])))
    # END SOLUTION


def icl_change(model, tokens, early, late, half_window=1):
    """-> (n_layers, n_heads): ICL score with each head ablated minus the clean one."""
    # BEGIN SOLUTION: the clean score, then one pattern-preserving ablation per head
    # Hint 1: two functions above do the work: icl_score of `model.per_token_loss(tokens)`
    #   once, then for every (layer, head) icl_score of pattern_preserving_losses.
    clean = icl_score(model.per_token_loss(tokens), early, late, half_window)
    change = np.zeros((model.config.n_layers, model.config.n_heads))
    for layer in range(model.config.n_layers):
        for head in range(model.config.n_heads):
            ablated = pattern_preserving_losses(model, tokens, layer, head)
            change[layer, head] = icl_score(ablated, early, late, half_window) - clean
    return change
    # END SOLUTION


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model, tokens = run.model(), run.eval_tokens            # 64 held-out windows of 64 tokens
    early, late = context_indices(model.config.n_ctx)
    clean = model.per_token_loss(tokens)
    print(f"ICL score (loss at index {late} minus index {early}): "
          f"{icl_score(clean, early, late):+.2f} nats")
    preserving = icl_change(model, tokens, early, late)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    right.plot(np.arange(1, tokens.shape[1]), clean.mean(0), "k", label="clean")
    names, full = [], []
    for layer in range(model.config.n_layers):
        for head in range(model.config.n_heads):
            names.append(f"{layer}.{head}")
            full_losses = model.per_token_loss(tokens, hooks=ablate_heads([(layer, head)]))
            full.append(icl_score(full_losses, early, late) - icl_score(clean, early, late))
            print(f"head {layer}.{head}: ICL score change, pattern-preserving "
                  f"{preserving[layer, head]:+.2f}, full ablation {full[-1]:+.2f}")
            right.plot(np.arange(1, tokens.shape[1]),
                       pattern_preserving_losses(model, tokens, layer, head).mean(0),
                       label=f"without {layer}.{head} (pattern-preserving)")
    x = np.arange(len(names))
    left.bar(x - 0.2, preserving.ravel(), 0.4, label="pattern-preserving")
    left.bar(x + 0.2, full, 0.4, label="full")
    left.set_xticks(x, [f"head {n}" for n in names])
    left.set(ylabel="change in ICL score (nats)", title="ablating each head")
    right.set(xlabel="context index", ylabel="loss (nats)", title="per-token loss by index")
    left.legend(), right.legend(fontsize=7)
    common.save(fig, "ex12_ablation_icl")
