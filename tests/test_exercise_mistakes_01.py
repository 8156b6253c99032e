"""Exercise 01's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference layernorm_backward with one thing wrong; the exercise's own checks
(exercises/test_01_layernorm_backward.py) are run on it and must fail with a message that
names the problem, never the formula. The mistaken variants are near copies of the
solution, which the students' tests must not hold: they live here."""
import pytest

import exercises.test_01_layernorm_backward as checks
from exercises.solutions import ex01_layernorm_backward as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


with_mistake, failure_of = mistakes.bound(checks, solution)


def backward(dx_of, dw_db=None):
    """layernorm_backward with dx computed by dx_of(dxhat, xhat, rstd, dout) (and dw, db by
    dw_db(dout, xhat, leading axes), if given)."""
    def layernorm_backward(dout, cache):
        xhat, rstd, w = cache
        leading = tuple(range(dout.ndim - 1))
        dw, db = (dout * xhat).sum(leading), dout.sum(leading)
        if dw_db:
            dw, db = dw_db(dout, xhat, leading)
        return dx_of(dout * w, xhat, rstd, dout), dw, db
    return layernorm_backward


def mean(a):
    return a.mean(-1, keepdims=True)


RIGHT = lambda g, xhat, rstd, dout: rstd * (g - mean(g) - xhat * mean(g * xhat))  # noqa: E731

DX_MISTAKES = {
    "no mean term": (lambda g, xhat, rstd, dout: rstd * (g - xhat * mean(g * xhat)),
                     ["must sum to 0", "term that comes from the row's mean is missing"]),
    "no variance term": (lambda g, xhat, rstd, dout: rstd * (g - mean(g)),
                         ["orthogonal to xhat", "from the row's variance (through rstd) is "
                          "missing"]),
    "neither term": (lambda g, xhat, rstd, dout: rstd * g,
                     ["no row of dx sums to 0", "both the term", "are missing"]),
    "the variance term added": (lambda g, xhat, rstd, dout:
                                rstd * (g - mean(g) + xhat * mean(g * xhat)),
                                ["variance", "wrong sign"]),
    "a sum for the mean": (lambda g, xhat, rstd, dout:
                           rstd * (g - g.sum(-1, keepdims=True) - xhat * mean(g * xhat)),
                           ["row's mean", "not a mean over the row"]),
    "no gain w": (lambda g, xhat, rstd, dout: RIGHT(dout, xhat, rstd, dout),
                  ["what it would be with w = 1", "gain w is lost"]),
    "no rstd": (lambda g, xhat, rstd, dout: RIGHT(g, xhat, rstd, dout) / rstd,
                ["lacks a factor rstd"]),
    "rstd twice": (lambda g, xhat, rstd, dout: RIGHT(g, xhat, rstd, dout) * rstd,
                   ["factor rstd too many"]),
    "the wrong sign": (lambda g, xhat, rstd, dout: -RIGHT(g, xhat, rstd, dout),
                       ["wrong sign"]),
}


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    for seed in range(3):
        checks.test_dx_matches_finite_differences(seed)
        checks.test_dw_db_match_finite_differences(seed)
    checks.test_agrees_with_the_engine_on_any_leading_shape()


def test_a_variant_written_otherwise_passes(monkeypatch):
    """dx from the mean and the variance written out by hand, not as the reference has it."""
    def by_hand(g, xhat, rstd, dout):
        D = g.shape[-1]
        return rstd / D * (D * g - g.sum(-1, keepdims=True)
                           - xhat * (g * xhat).sum(-1, keepdims=True))
    monkeypatch.setattr(checks, "ex", with_mistake(layernorm_backward=backward(by_hand)))
    checks.test_dx_matches_finite_differences(0)
    checks.test_agrees_with_the_engine_on_any_leading_shape()


@pytest.mark.parametrize("mistake", DX_MISTAKES)
def test_dx_mistakes_are_named(monkeypatch, mistake):
    dx_of, says = DX_MISTAKES[mistake]
    for test, args in [(checks.test_dx_matches_finite_differences, (1,)),
                       (checks.test_agrees_with_the_engine_on_any_leading_shape, ())]:
        message = failure_of(monkeypatch, test, *args, layernorm_backward=backward(dx_of))
        assert message.startswith("dx"), message                  # names the quantity
        assert "at entry" in message, message                      # and where
        for phrase in says:
            assert phrase in message, f"{mistake}: {phrase!r} not in: {message}"


def test_no_message_gives_the_formula(monkeypatch):
    for mistake, (dx_of, _) in DX_MISTAKES.items():
        message = failure_of(monkeypatch, checks.test_dx_matches_finite_differences, 0,
                             layernorm_backward=backward(dx_of))
        for formula in ("mean over D of", "dxhat * xhat", "dxhat = dout * w", "rstd * ("):
            assert formula not in message, f"{mistake}: the message gives {formula!r}: {message}"


@pytest.mark.parametrize("dw_db, says", [
    (lambda dout, xhat, leading: (dout.sum(leading), (dout * xhat).sum(leading)),
     ["are dw and db swapped"]),
    (lambda dout, xhat, leading: ((dout * xhat).sum(0), dout.sum(0)),
     ["dw: yours has shape (3, 6)", "sum over every axis but the last"]),
    (lambda dout, xhat, leading: ((dout * xhat).mean(leading), dout.mean(leading)),
     ["dw: yours differs from finite differences", "out = xhat * w + b"]),
], ids=["swapped", "first axis only", "mean not sum"])
def test_dw_db_mistakes_are_named(monkeypatch, dw_db, says):
    message = failure_of(monkeypatch, checks.test_dw_db_match_finite_differences, 0,
                         layernorm_backward=backward(RIGHT, dw_db))
    for phrase in says:
        assert phrase in message, message


def test_a_fixed_leading_shape_fails_on_other_shapes(monkeypatch):
    """dw, db summed over axes (0, 1) only: right for (2, 3, 6), wrong for (7,) and (4, 7)."""
    fixed = lambda dout, xhat, leading: ((dout * xhat).sum((0, 1)), dout.sum((0, 1)))  # noqa
    monkeypatch.setattr(checks, "ex", with_mistake(layernorm_backward=backward(RIGHT, fixed)))
    checks.test_dw_db_match_finite_differences(0)
    with pytest.raises(Exception, match="axis"):         # numpy's AxisError on the 1-d input
        checks.test_agrees_with_the_engine_on_any_leading_shape()
