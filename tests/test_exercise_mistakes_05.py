"""Exercise 05's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference repeated_random_tokens or induction_stripe with one thing wrong (the
stripe's offset, length rather than length - 1; the first query; the mean; the head axis;
the tokens' draws and copies); the exercise's own checks (exercises/test_05_induction_stripe.py)
are run on it and must fail with a message that names the problem. The mistaken variants are
near copies of the solution, which the students' tests must not hold: they live here."""
import numpy as np
import pytest

import exercises.test_05_induction_stripe as checks
from exercises.solutions import ex05_induction_stripe as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


with_mistake, failure_of = mistakes.bound(checks, solution)


def tokens(values=lambda d_vocab: np.arange(1, d_vocab), replace=False, copies="tile",
           one_segment=False, bos=True, seeded=True, dtype=np.int64):
    """repeated_random_tokens with one thing done otherwise."""
    def repeated_random_tokens(n, length, repeats, d_vocab=256, seed=0):
        rng = np.random.default_rng(seed if seeded else None)
        draws = 1 if one_segment else n
        segments = np.stack([rng.choice(values(d_vocab), length, replace=replace)
                             for _ in range(draws)])
        segments = np.repeat(segments, n, axis=0) if one_segment else segments
        body = (np.tile(segments, (1, repeats)) if copies == "tile"
                else np.repeat(segments, repeats, axis=1) if copies == "repeat"
                else np.tile(segments, (repeats, 1)))
        if not bos:
            return body.astype(dtype)
        return np.concatenate([np.full((len(body), 1), 0), body], axis=1).astype(dtype)
    return repeated_random_tokens


def stripe(offset=lambda length: -(length - 1), first=2, last=None, axes=(0, 2), how="mean",
           examples=slice(None)):
    """induction_stripe with another diagonal, other queries, another reduction."""
    def induction_stripe(pattern, length):
        diagonal = np.diagonal(pattern[examples], offset(length), axis1=-2, axis2=-1)
        end = None if last is None else last(length)
        picked = diagonal[..., first:end]
        return picked.mean(axis=axes) if how == "mean" else picked.sum(axis=axes) / len(picked)
    return induction_stripe


STRUCTURE = checks.test_repeated_random_tokens_structure
LONG = checks.test_a_segment_as_long_as_the_vocabulary_allows
READ = checks.test_the_stripe_reads_what_the_engine_reads
HAND_BUILT = checks.test_the_hand_built_induction_head_sits_on_the_stripe
THREE = checks.test_with_three_copies_the_third_splits_its_attention


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    for test in (STRUCTURE, LONG, READ, HAND_BUILT, THREE):
        test()


def test_a_loop_written_otherwise_passes(monkeypatch):
    def by_loop(pattern, length):
        N, H, T, _ = pattern.shape
        return np.array([np.mean([pattern[b, h, i, i - length + 1] for b in range(N)
                                  for i in range(1 + length, T)]) for h in range(H)])
    monkeypatch.setattr(checks, "ex", with_mistake(induction_stripe=by_loop))
    for test in (READ, HAND_BUILT, THREE):
        test()


@pytest.mark.parametrize("mistake, test, says", [
    (tokens(copies="repeat"), STRUCTURE, ["written `repeats` times in a row"]),
    (tokens(values=np.arange), LONG, ["must lie in 1..29", "from 0", "BOS (token 0) is drawn"]),
    (tokens(values=lambda d: np.arange(1, d + 1)), LONG, ["must lie in 1..29", "to 30"]),
    (tokens(replace=True), LONG, ["repeats a token", "replace=False"]),
    (tokens(one_segment=True), STRUCTURE, ["two rows have the same segment"]),
    (tokens(bos=False), STRUCTURE, ["tokens: yours has shape (6, 100), expected (6, 101)"]),
    (tokens(copies="rows"), STRUCTURE, ["tokens: yours has shape (24, 26)"]),
    (tokens(seeded=False), STRUCTURE, ["the same seed gave different tokens"]),
    (tokens(dtype=np.float64), STRUCTURE, ["should be integers"]),
], ids=["np.repeat", "BOS drawn", "d_vocab drawn", "with replacement", "one segment",
        "no BOS", "copies as rows", "unseeded", "floats"])
def test_token_mistakes_are_named(monkeypatch, mistake, test, says):
    message = failure_of(monkeypatch, test, repeated_random_tokens=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("mistake, says", [
    (stripe(offset=lambda length: -length), ["differs from circuits.prefix_matching_score",
                                             "the diagonal 6 below the main one",
                                             "earlier occurrence of the query's own token"]),
    (stripe(offset=lambda length: -(length - 2)), ["the diagonal 4 below", "the token after"]),
    (stripe(first=1), ["counts queries [6]", "starts at query 1 + length = 7"]),
    (stripe(first=3), ["leaves out queries [7]"]),
    (stripe(how="sum"), ["right entries", "a sum over the queries, not a mean"]),
    (stripe(examples=slice(0, 1)), ["counts only the first example"]),
    (stripe(axes=(1, 2)), ["induction_stripe: yours has shape (3,)", "head axis (1) must stay"]),
    (stripe(axes=(0,)), ["yours has shape (169, 6)", "head axis (1) must stay"]),
], ids=["offset length", "offset length - 2", "one query early", "one query late", "sum",
        "first example", "mean over heads", "mean over the batch only"])
def test_stripe_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, READ, induction_stripe=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("mistake", [stripe(offset=lambda length: -length), stripe(first=1)],
                         ids=["offset length", "one query early"])
def test_stripe_mistakes_also_fail_on_the_hand_built_model(monkeypatch, mistake):
    message = failure_of(monkeypatch, THREE, induction_stripe=mistake)
    assert "with three copies, the hand-built induction head's stripe is 0.75" in message, message


def test_only_the_second_copy_is_named_with_three_copies(monkeypatch):
    """Queries of the second copy only (2 length + 1 is where the third starts): right with two
    copies, named with three."""
    second_only = stripe(last=lambda length: length + 2)
    monkeypatch.setattr(checks, "ex", with_mistake(induction_stripe=second_only))
    READ()
    message = failure_of(monkeypatch, THREE, induction_stripe=second_only)
    assert "only the second copy's queries count in yours" in message, message


def test_no_message_gives_the_formula(monkeypatch):
    for mistake in [stripe(offset=lambda length: -length), stripe(first=1), stripe(first=3),
                    stripe(how="sum"), stripe(offset=lambda length: -(length - 2))]:
        message = failure_of(monkeypatch, READ, induction_stripe=mistake)
        for formula in ("length - 1", "i - length", "np.diagonal", "offset", "[..., 2:]",
                        "axis=(0, 2)"):
            assert formula not in message, f"the message gives {formula!r}: {message}"
