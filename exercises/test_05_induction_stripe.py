"""Exercise 05: repeated random tokens have the right structure; the stripe is read where the
engine reads it; the hand-built induction head sits on it.

The stripe is checked on a pattern made to be read: each of its 169 heads holds one (query,
key) entry (13 positions: BOS + 6 tokens x 2), so that your induction_stripe gives, head by
head, the weight it puts on each entry. With two copies the stripe is what
circuits.prefix_matching_score measures (the token after the earlier occurrence, from every
query of the second copy), so the engine's weights are the expected ones, and a failure
names the entries yours reads otherwise: the diagonal, the queries, the mean. Examples
weigh 1, 2 and 3, so that a lost example shows. Then the hand-built induction head: all of
its attention on the stripe with two copies, three quarters with three (in the third copy
it splits its attention between the two earlier ones), known by construction.

For the teacher: circuits.prefix_matching_score (with repeats=2) and
circuits.repeated_random_tokens hold this exercise's answers; the checks here hold no copy
of them."""
import types

import numpy as np
import pytest

from circuits import induction_model, prefix_matching_score
from exercises.harness import check_shape, fail, load

ex = load("ex05_induction_stripe")


# ---- repeated_random_tokens ---------------------------------------------------------------

def tokens_of(n, length, repeats, d_vocab, seed):
    tokens = np.asarray(ex.repeated_random_tokens(n, length, repeats, d_vocab=d_vocab,
                                                  seed=seed))
    check_shape("tokens", tokens, (n, 1 + length * repeats),
                "(n, 1 + length * repeats): BOS, then `repeats` copies of the segment")
    if not np.issubdtype(tokens.dtype, np.integer):
        fail(f"tokens should be integers (token ids), got {tokens.dtype}")
    return tokens


@pytest.mark.checks("repeated_random_tokens")
def test_repeated_random_tokens_structure():
    n, length, repeats = 6, 25, 4
    tokens = tokens_of(n, length, repeats, 256, 3)
    if not (tokens[:, 0] == 0).all():
        fail("every row should start with BOS (token 0)")
    body = tokens[:, 1:].reshape(n, repeats, length)
    if (body == 0).any():
        fail("BOS (token 0) appears inside a segment: draw tokens from 1..d_vocab-1")
    if (body >= 256).any():
        fail(f"a token is {body.max()}, >= d_vocab (256): draw tokens from 1..d_vocab-1")
    if not (body == body[:, :1]).all():
        in_place = tokens[:, 1:1 + repeats]
        if (in_place == in_place[:, :1]).all():
            fail("each token is written `repeats` times in a row: the whole segment must come "
                 "again after itself, `repeats` times")
        fail("the copies of a row's segment differ: write the same segment `repeats` times")
    if any(len(set(row)) < length for row in body[:, 0]):
        fail("a segment repeats a token: draw distinct tokens (replace=False), so that each "
             "token's earlier occurrence is unique")
    if len({tuple(row) for row in body[:, 0]}) < n:
        fail("two rows have the same segment: draw a new segment for each row")
    again = tokens_of(n, length, repeats, 256, 3)
    if not np.array_equal(tokens, again):
        fail("the same seed gave different tokens: draw everything from default_rng(seed)")
    if np.array_equal(tokens, tokens_of(n, length, repeats, 256, 4)):
        fail("seeds 3 and 4 gave the same tokens: draw from default_rng(seed)")


@pytest.mark.checks("repeated_random_tokens")
def test_a_segment_as_long_as_the_vocabulary_allows():
    """25 distinct tokens of the 29 that d_vocab 30 allows: a draw with replacement repeats
    one, and one that takes token 0 or 30 shows."""
    tokens = tokens_of(5, 25, 2, 30, 0)
    body = tokens[:, 1:].reshape(5, 2, 25)
    if body.min() < 1 or body.max() > 29:
        fail(f"with d_vocab 30 the tokens must lie in 1..29; yours run from {body.min()} to "
             f"{body.max()}" + (": BOS (token 0) is drawn too" if body.min() < 1 else ""))
    if any(len(set(row)) < 25 for row in body[:, 0]):
        fail("a segment of 25 tokens out of 29 repeats a token: draw distinct tokens "
             "(replace=False)")


# ---- induction_stripe, read entry by entry ------------------------------------------------

LENGTH = 6
T = 1 + 2 * LENGTH
N = 3                                          # examples, weighing 1, 2, 3


def one_entry_pattern():
    """(N, T*T, T, T): head q*T + k holds one entry, (query q, key k), (n + 1) in example n."""
    pattern = np.zeros((N, T * T, T, T))
    heads = np.arange(T * T)
    for n in range(N):
        pattern[n, heads, heads // T, heads % T] = n + 1.0
    return pattern


class OneLayer:
    """A stand-in model whose one layer's pattern is `pattern`, whatever the tokens."""

    def __init__(self, pattern):
        self.pattern = pattern
        N_, H, T_, _ = pattern.shape
        self.config = types.SimpleNamespace(n_layers=1, n_heads=H, n_ctx=T_, d_vocab=64)

    def run_with_cache(self, tokens, hooks=None):
        return None, {"blocks.0.attn.hook_pattern": self.pattern}


def entries(weights):
    """{(query, key): weight} of the nonzero weights of the T*T one-entry heads."""
    return {(int(h) // T, int(h) % T): float(weights[h])
            for h in np.flatnonzero(np.abs(weights) > 1e-12)}


def shown(pairs, limit=4):
    pairs = sorted(pairs)
    text = ", ".join(f"({q}, {k})" for q, k in pairs[:limit])
    return text + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")


def what_differs(yours, expected):
    """In words: which entries yours weighs otherwise than the engine."""
    mine, right = entries(yours), entries(expected)
    if not mine:
        return "yours weighs no entry at all"
    if set(mine) == set(right):
        ratios = {round(mine[p] / right[p], 9) for p in right}
        if len(ratios) == 1:
            c = ratios.pop()
            for value, says in [(LENGTH, "is a sum over the queries, not a mean"),
                                (N, "is a sum over the examples, not a mean"),
                                (1 / 2, "counts only the first example: average over the "
                                        "batch too"),
                                (LENGTH * N, "is a sum, not a mean")]:
                if abs(c - value) < 1e-9:
                    return f"yours reads the right entries, but {says}"
            return f"yours reads the right entries, but {c:.4g} times too much"
        return "yours reads the right entries, but weighs them unequally: a plain mean"
    offsets = {q - k for q, k in mine}
    queries, right_queries = {q for q, _ in mine}, {q for q, _ in right}
    if len(offsets) == 1 and offsets != {LENGTH - 1}:
        d = offsets.pop()
        said = (f"yours reads the diagonal {d} below the main one "
                f"(entries {shown(mine)})")
        if d == LENGTH:
            return (f"{said}: the earlier occurrence of the query's own token; the stripe is "
                    f"the token after it")
        return (f"{said}; the stripe is the token after the earlier occurrence of the query's "
                f"token")
    if offsets == {LENGTH - 1}:
        extra, missing = sorted(queries - right_queries), sorted(right_queries - queries)
        if extra:
            return (f"yours counts queries {extra}, before the second copy (it starts at "
                    f"query 1 + length = {1 + LENGTH})")
        if missing:
            return f"yours leaves out queries {missing} of the second copy"
    return (f"yours reads entries {shown(mine)}; the stripe's are {shown(right)} "
            f"(query, key)")


@pytest.mark.checks("induction_stripe")
def test_the_stripe_reads_what_the_engine_reads():
    pattern = one_entry_pattern()
    yours = ex.induction_stripe(pattern.copy(), LENGTH)
    check_shape("induction_stripe", yours, (T * T,),
                "one number per head: average over the batch (axis 0) and the queries; the "
                "head axis (1) must stay")
    expected = prefix_matching_score(OneLayer(pattern), n_examples=N, length=LENGTH,
                                     repeats=2)[0]
    yours = np.asarray(yours, dtype=np.float64)
    if not np.allclose(yours, expected, rtol=1e-9, atol=1e-12):
        fail(f"induction_stripe on a pattern whose heads each hold one (query, key) entry "
             f"(BOS + {LENGTH} tokens x 2, {T} positions) differs from "
             f"circuits.prefix_matching_score with two copies: {what_differs(yours, expected)}")


def stripe_of(model, tokens, length, layer):
    _, cache = model.run_with_cache(tokens)
    return np.asarray(ex.induction_stripe(cache[f"blocks.{layer}.attn.hook_pattern"], length))


@pytest.mark.checks("induction_stripe")
def test_the_hand_built_induction_head_sits_on_the_stripe():
    model = induction_model(d_vocab=32, n_ctx=64)
    length = 20
    tokens = np.asarray(ex.repeated_random_tokens(4, length, 2, d_vocab=32, seed=0))
    previous, induction = (stripe_of(model, tokens, length, layer) for layer in (0, 1))
    if not induction[0] > 0.99:
        fail(f"the hand-built induction head 1.0 attends along the stripe (~1.00), but your "
             f"induction_stripe gives it {induction[0]:.2f}")
    if not previous[0] < 0.01:
        fail(f"the previous-token head 0.0 attends to i-1, not to the stripe (~0.00), but your "
             f"induction_stripe gives it {previous[0]:.2f}")


@pytest.mark.checks("induction_stripe")
def test_with_three_copies_the_third_splits_its_attention():
    """With three copies the hand-built head attends, from the third copy, to the tokens after
    both earlier occurrences, half to each: the stripe (the copy just before) gets 1 from the
    second copy's queries and 1/2 from the third's, 3/4 in all."""
    model = induction_model(d_vocab=32, n_ctx=64)
    length = 20
    tokens = np.asarray(ex.repeated_random_tokens(4, length, 3, d_vocab=32, seed=1))
    induction = stripe_of(model, tokens, length, 1)[0]
    if abs(induction - 0.75) > 1e-3:
        cause = (": only the second copy's queries count in yours; every query from the second "
                 "copy on does" if abs(induction - 1.0) < 1e-3 else "")
        fail(f"with three copies, the hand-built induction head's stripe is 0.75 (1 from the "
             f"second copy, 1/2 from the third), yours {induction:.3f}{cause}")
