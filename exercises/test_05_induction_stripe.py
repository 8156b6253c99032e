"""Exercise 05: repeated random tokens have the right structure; the stripe is measured on
the right diagonal (checked on a hand-built induction model and against a plain loop)."""
import numpy as np
import pytest

from circuits import induction_model
from exercises.harness import check_close, check_shape, fail, load

ex = load("ex05_induction_stripe")


@pytest.mark.checks("repeated_random_tokens")
def test_repeated_random_tokens_structure():
    n, length, repeats = 6, 25, 4
    tokens = np.asarray(ex.repeated_random_tokens(n, length, repeats, d_vocab=256, seed=3))
    check_shape("tokens", tokens, (n, 1 + length * repeats), "BOS plus `repeats` copies")
    if not np.issubdtype(tokens.dtype, np.integer):
        fail(f"tokens should be integers (token ids), got {tokens.dtype}")
    if not (tokens[:, 0] == 0).all():
        fail("every row should start with BOS (token 0)")
    body = tokens[:, 1:].reshape(n, repeats, length)
    if (body == 0).any():
        fail("BOS (token 0) appears inside a segment: draw tokens from 1..d_vocab-1")
    if (body >= 256).any():
        fail("a token is >= d_vocab")
    if not (body == body[:, :1]).all():
        fail("the copies of a row's segment differ: write the same segment `repeats` times")
    if any(len(set(row)) < length for row in body[:, 0]):
        fail("a segment repeats a token: draw distinct tokens (replace=False), so that each "
             "token's earlier occurrence is unique")
    if len({tuple(row) for row in body[:, 0]}) < n:
        fail("two rows have the same segment: draw a new segment for each row")
    again = np.asarray(ex.repeated_random_tokens(n, length, repeats, d_vocab=256, seed=3))
    if not np.array_equal(tokens, again):
        fail("the same seed gave different tokens: draw everything from default_rng(seed)")


def loop_stripe(pattern, length, after=1):
    N, H, T, _ = pattern.shape
    return np.array([np.mean([pattern[b, h, i, i - length + after] for b in range(N)
                              for i in range(1 + length, T)]) for h in range(H)])


@pytest.mark.checks("induction_stripe")
def test_stripe_against_a_loop():
    rng = np.random.default_rng(0)
    pattern = rng.random((3, 2, 31, 31))                 # any numbers: only the indexing matters
    for length in (5, 10):
        check_close(f"induction_stripe (length {length})", ex.induction_stripe(pattern, length),
                    loop_stripe(pattern, length), "a loop over queries i >= 1 + length",
                    mistakes={"you took the diagonal at offset -length, the earlier occurrence "
                              "of the same token; induction attends to the token after it, "
                              "offset -(length - 1)": loop_stripe(pattern, length, after=0),
                              "you started at the wrong query: average over i >= 1 + length, "
                              "the second copy on": loop_stripe(pattern[..., 1:, 1:], length)},
                    hint="average pattern[:, h, i, i - length + 1] over queries i >= 1 + length "
                         "and over the batch")


@pytest.mark.checks("induction_stripe")
def test_the_hand_built_induction_head_sits_on_the_stripe():
    model = induction_model(d_vocab=32, n_ctx=64)
    length = 20
    # two copies: in a third, the head would split its attention over both earlier copies
    tokens = np.asarray(ex.repeated_random_tokens(4, length, 2, d_vocab=32, seed=0))
    _, cache = model.run_with_cache(tokens)
    previous = ex.induction_stripe(cache["blocks.0.attn.hook_pattern"], length)
    induction = ex.induction_stripe(cache["blocks.1.attn.hook_pattern"], length)
    if not induction[0] > 0.9:
        fail(f"the hand-built induction head 1.0 attends along the stripe, but your "
             f"induction_stripe gives it {induction[0]:.2f}")
    if not previous[0] < 0.1:
        fail(f"the previous-token head 0.0 attends to i-1, not to the stripe, but your "
             f"induction_stripe gives it {previous[0]:.2f}")
