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

import circuits
from exercises import common

BOS = 0


def repeated_random_tokens(n, length, repeats, d_vocab=256, seed=0):
    """-> (n, 1 + length * repeats) int64: BOS, then `repeats` copies of a random segment."""
    raise NotImplementedError(
        'exercise 05: draw n segments of distinct tokens, tile them, put BOS in front')


def induction_stripe(pattern, length):
    """pattern (N, H, T, T) -> (H,): mean attention from i to i - length + 1, i >= 1 + length."""
    raise NotImplementedError(
        'exercise 05: one diagonal of each pattern, from query 1 + length on')


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model = run.model()
    length = 30
    tokens = repeated_random_tokens(8, length, 2, model.config.d_vocab, seed=0)
    segments = tokens[:, 1:].reshape(8, 2, length)
    if not ((tokens[:, 0] == BOS).all() and (segments[:, 0] == segments[:, 1]).all()
            and all(len(set(row)) == length for row in segments[:, 0])
            and 0 < segments.min() and segments.max() < model.config.d_vocab):
        print("WRONG: your tokens are not BOS + a segment of distinct tokens twice; make "
              "exercise N=5 says what differs")
    else:
        print(f"ok     your tokens: BOS + a segment of {length} distinct tokens, twice")
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
    # With two copies, the stripe is what prefix matching measures: the engine's, on its tokens
    engine = circuits.prefix_matching_score(model, n_examples=8, length=length, repeats=2,
                                            seed=0)
    _, cache = model.run_with_cache(
        circuits.repeated_random_tokens(8, length, 2, None, model.config.d_vocab, seed=0))
    yours = np.stack([induction_stripe(cache[f"blocks.{l}.attn.hook_pattern"], length)
                      for l in range(L)])
    if np.allclose(yours, engine, rtol=1e-5, atol=1e-6):
        print("ok     your stripes are circuits.prefix_matching_score with two copies, on its "
              "tokens")
    else:
        l, h = np.unravel_index(np.argmax(np.abs(yours - engine)), engine.shape)
        print(f"WRONG: your stripes differ from circuits.prefix_matching_score with two copies, "
              f"most at head {l}.{h} (yours {yours[l, h]:.3f}, circuits' {engine[l, h]:.3f})")
