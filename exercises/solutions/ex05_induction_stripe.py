"""Exercise 05: repeated random tokens, and the induction stripe in an attention pattern.

Paper: "Key Concepts: Induction Heads" ("induction heads are any heads that empirically
increase the likelihood of [B] given [A][B]...[A] when shown a repeated sequence of
completely random tokens") and method "(3) Head activation evaluators" (BOS + 25 random
tokens repeated 4 times). Random tokens cannot be predicted from training statistics, so
only attention to the earlier copy helps, and an induction head's pattern shows it as a
stripe: from each token of a later copy to the token just after its earlier occurrence.

What to compute:
  1. repeated_random_tokens(n, length, repeats, d_vocab, seed): each row is BOS (token 0)
     followed by a segment of `length` distinct random tokens from 1..d_vocab-1, the
     segment written `repeats` times.
  2. induction_stripe(pattern, length): per head, the mean attention on the stripe.
     A token at position i of a later copy has its earlier occurrence at i - length; the
     token after that sits at i - length + 1. Average pattern[:, h, i, i - length + 1]
     over every query i from the second copy on (i >= 1 + length) and over the batch.

Shapes: repeated_random_tokens -> (n, 1 + length * repeats) int64.
        induction_stripe: pattern (N, H, T, T) -> (H,) in [0, 1].

The first run of exercises 05-12 trains the 2-layer tiny-induction model (~1 minute); it
is kept in exercises/_output/runs for the others.

Run: python -m exercises.ex05_induction_stripe    Check: make exercise N=5
Hints, one step at a time: python -m exercises.hint 5 (then --step 2)
"""
import numpy as np

from exercises import common

BOS = 0


def repeated_random_tokens(n, length, repeats, d_vocab=256, seed=0):
    """-> (n, 1 + length * repeats) int64: BOS, then `repeats` copies of a random segment."""
    # BEGIN SOLUTION: draw n segments of distinct tokens, tile them, put BOS in front
    # Hint 1: `rng = np.random.default_rng(seed)`; `rng.choice(values, length,
    #   replace=False)` draws distinct values, one segment per row; `np.tile` repeats an
    #   array along an axis.
    # Hint 2: stack n draws from `np.arange(1, d_vocab)` into (n, length), `np.tile(segments,
    #   (1, repeats))`, then `np.concatenate` a column of BOS in front, as int64.
    rng = np.random.default_rng(seed)
    segments = np.stack([rng.choice(np.arange(1, d_vocab), length, replace=False)
                         for _ in range(n)])                        # (n, length)
    body = np.tile(segments, (1, repeats))                          # (n, length * repeats)
    return np.concatenate([np.full((n, 1), BOS), body], axis=1).astype(np.int64)
    # END SOLUTION


def induction_stripe(pattern, length):
    """pattern (N, H, T, T) -> (H,): mean attention from i to i - length + 1, i >= 1 + length."""
    # BEGIN SOLUTION: one diagonal of each pattern, from query 1 + length on
    # Hint 1: the stripe is a diagonal. `np.diagonal(pattern, offset, axis1=-2, axis2=-1)`
    #   returns diagonal `offset` (negative: below the main one) of every (T, T) matrix; its
    #   k-th entry is `pattern[..., k - offset, k]`, query k - offset.
    # Hint 2: the offset is `-(length - 1)`, so entry k is query k + length - 1, and the
    #   queries from 1 + length on are the entries k >= 2: mean over the batch and those.
    stripe = np.diagonal(pattern, -(length - 1), axis1=-2, axis2=-1)  # (N, H, T - length + 1)
    # the k-th entry is query k + length - 1; queries from 1 + length on are k >= 2
    return stripe[..., 2:].mean(axis=(0, 2))
    # END SOLUTION


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model = run.model()
    length = 30
    tokens = repeated_random_tokens(8, length, 2, model.config.d_vocab, seed=0)
    _, cache = model.run_with_cache(tokens)
    L, H = model.config.n_layers, model.config.n_heads
    fig, axes = plt.subplots(L, H, figsize=(4 * H, 4 * L), squeeze=False)
    for layer in range(L):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        stripe = induction_stripe(pattern, length)
        for head in range(H):
            print(f"head {layer}.{head}: mean attention on the induction stripe {stripe[head]:.2f}")
            ax = axes[layer, head]
            ax.imshow(pattern[0, head], cmap="Blues", vmin=0, vmax=1)
            ax.set(title=f"head {layer}.{head}  stripe {stripe[head]:.2f}",
                   xlabel="key position", ylabel="query position")
    fig.suptitle(f"BOS + {length} random tokens x 2: the induction stripe sits "
                 f"{length - 1} below the diagonal")
    common.save(fig, "ex05_induction_stripe")
