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
     every layer's attention pattern; run it again with hooks of your own that put every
     recorded pattern back and zero that head's output -> per-token losses.
  3. icl_change(model, tokens, early, late, half_window): for every head, icl_score with
     the head ablated minus icl_score of the clean model. Positive: the head was doing
     in-context learning.

Shapes: losses (N, T-1) -> float. pattern_preserving_losses -> (N, T-1).
        icl_change -> (n_layers, n_heads).

Hooks (minitransformer.hooks; exercise 14 does more with them): model.per_token_loss(tokens,
hooks={name: fn}) calls fn(activation, name) at hook point `name` of model.hook_names(),
with the activation there, read-only. fn returns None to keep it, or a replacement of the
same shape, which the rest of the forward computes with. The points you need:
blocks.{l}.attn.hook_pattern (B,H,T,T), each layer's attention pattern, and
blocks.{l}.attn.hook_z (B,T,H,E), its heads' outputs before W_O. model.run_with_cache(tokens)
-> (logits, cache) records every activation under its hook point's name. Write the
ablation from hooks of your own, not with minitransformer.interventions' replay or
ablate_heads: the check tells them apart.

model.per_token_loss(tokens, hooks=ablate_heads([(layer, head)])) runs the model with a head
zeroed (minitransformer.interventions): a full ablation, every later pattern recomputed.
The run compares it with yours, head by head: explain the difference (exercise 10 tells you
why).

Run: python -m exercises.ex12_ablation_icl    Check: make exercise N=12
Hints, one step at a time: python -m exercises.hint 12 (then --step 2)
"""
import numpy as np

from circuits import ablation_losses, context_indices
from circuits import icl_score as engine_icl_score
from exercises import common
from minitransformer.interventions import ablate_heads


def icl_score(losses, early, late, half_window=1):
    """losses (N, T-1) -> mean loss around index `late` minus around index `early`."""
    raise NotImplementedError('exercise 12: a windowed mean at each index, then the difference')


def pattern_preserving_losses(model, tokens, layer, head):
    """-> (N, T-1) per-token losses with head (layer, head) zeroed, every pattern replayed."""
    raise NotImplementedError(
        'exercise 12: record the clean run, then hooks of your own: patterns put back, head '
        'zeroed')


def icl_change(model, tokens, early, late, half_window=1):
    """-> (n_layers, n_heads): ICL score with each head ablated minus the clean one."""
    raise NotImplementedError(
        'exercise 12: the clean score, then one pattern-preserving ablation per head')


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model, tokens = run.model(), run.eval_tokens            # 64 held-out windows of 64 tokens
    early, late = context_indices(model.config.n_ctx)
    clean = model.per_token_loss(tokens)
    score = icl_score(clean, early, late)
    print(f"ICL score (loss at index {late} minus index {early}): {score:+.2f} nats"
          + ("" if np.isclose(score, engine_icl_score(clean, early, late, 1), atol=1e-6) else
             f"   WRONG: circuits.icl_score gives {engine_icl_score(clean, early, late, 1):+.2f}"))
    preserving = icl_change(model, tokens, early, late)
    engine = ablation_losses(model, tokens, method="pattern-preserving")   # every head, in order
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    right.plot(np.arange(1, tokens.shape[1]), clean.mean(0), "k", label="clean")
    names, full = [], []
    for i, (layer, head) in enumerate((l, h) for l in range(model.config.n_layers)
                                      for h in range(model.config.n_heads)):
        names.append(f"{layer}.{head}")
        full_losses = model.per_token_loss(tokens, hooks=ablate_heads([(layer, head)]))
        full.append(icl_score(full_losses, early, late) - score)
        yours = pattern_preserving_losses(model, tokens, layer, head)
        gap = float(np.abs(yours - engine.ablated[i]).max())
        expected = icl_score(engine.ablated[i], early, late) - icl_score(engine.clean, early, late)
        print(f"head {layer}.{head}: ICL score change, pattern-preserving "
              f"{preserving[layer, head]:+.2f}, full ablation {full[-1]:+.2f}"
              + (f"   WRONG: your pattern-preserving losses differ from "
                 f"circuits.ablation_losses' by up to {gap:.2g}" if gap > 1e-4 else "")
              + (f"   WRONG: icl_change gives {preserving[layer, head]:+.3f}, the engine's "
                 f"losses {expected:+.3f}" if abs(preserving[layer, head] - expected) > 1e-3
                 else ""))
        right.plot(np.arange(1, tokens.shape[1]), yours.mean(0),
                   label=f"without {layer}.{head} (pattern-preserving)")
    x = np.arange(len(names))
    left.bar(x - 0.2, preserving.ravel(), 0.4, label="pattern-preserving")
    left.bar(x + 0.2, full, 0.4, label="full")
    left.set_xticks(x, [f"head {n}" for n in names])
    left.set(ylabel="change in ICL score (nats)", title="ablating each head")
    right.set(xlabel="context index", ylabel="loss (nats)", title="per-token loss by index")
    left.legend(), right.legend(fontsize=7)
    common.save(fig, "ex12_ablation_icl")
