"""Exercise 01: LayerNorm backward against finite differences and against the engine.

A failure names the gradient and its worst entry and, where it can tell, what is missing. It
tells by two properties every right dx has, not by a copy of the formula: each row of dx sums
to 0 (adding the same amount to every x of a row leaves LayerNorm's output as it was), and
each row is orthogonal to xhat (so does stretching a row about its mean, but for eps).

For the teacher: minitransformer.ops.layernorm_backward, which the last check compares with,
is this exercise's answer in the engine (a student who opens it finds the formula); the
checks here hold no copy of it."""
import numpy as np
import pytest

from exercises.common import finite_differences
from exercises.harness import check_close, check_shape, load
from minitransformer.ops.layernorm import layernorm_backward as engine_backward

ex = load("ex01_layernorm_backward")


def case(seed, shape=(2, 3, 6)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0)
    w, b = rng.normal(size=shape[-1]) + 1.0, rng.normal(size=shape[-1])
    return x, w, b, rng.normal(size=shape)


def row(index):
    return f"row {tuple(int(i) for i in index)}" if len(index) else "the row"


def dx_mistake(dx, dout, cache):
    """What is wrong with dx, in words (None: nothing this can name). cache = (xhat, rstd,
    w) of the forward."""
    xhat, rstd, w = cache
    dx = np.asarray(dx, dtype=np.float64)
    if dx.shape != xhat.shape:
        return None
    expected = engine_backward(dout, cache)[0]
    size = np.abs(expected).max()
    sums = dx.sum(-1)
    along = (dx * xhat).sum(-1) / (np.linalg.norm(dx, axis=-1) * np.linalg.norm(xhat, axis=-1)
                                   + 1e-300)
    bad_sum = np.abs(sums) > 1e-6 * size * dx.shape[-1]
    bad_along = np.abs(along) > 1e-3
    if bad_sum.any() and bad_along.any():
        worst = np.unravel_index(np.argmax(np.abs(sums)), sums.shape)
        return (f"no row of dx sums to 0 ({row(worst)} sums to {sums[worst]:.3g}) and none is "
                f"orthogonal to xhat: both the term that comes from the row's mean and the "
                f"one from its variance (through rstd) are missing or wrong")
    if bad_sum.any():
        worst = np.unravel_index(np.argmax(np.abs(sums)), sums.shape)
        return (f"each row of dx must sum to 0 (adding the same amount to every x in a row "
                f"changes no output), but {row(worst)} sums to {sums[worst]:.3g}: the term "
                f"that comes from the row's mean is missing, has the wrong sign, or is not a "
                f"mean over the row")
    if bad_along.any():
        worst = np.unravel_index(np.argmax(np.abs(along)), along.shape)
        return (f"each row of dx must be orthogonal to xhat (stretching a row about its mean "
                f"changes no output, but for eps), but in {row(worst)} the cosine of dx and "
                f"xhat is {along[worst]:.3g}: the term that comes from the row's variance "
                f"(through rstd) is missing, has the wrong sign, or is not a mean over the row")
    close = lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-10 * size)   # noqa: E731
    if close(dx, engine_backward(dout, (xhat, rstd, np.ones_like(w)))[0]):
        return ("dx is what it would be with w = 1: the gain w is lost on the way back "
                "from out to xhat")
    if close(dx, -expected):
        return "dx has the wrong sign"
    if close(dx * rstd, expected):
        return ("dx lacks a factor rstd in each row: xhat = (x - mean) * rstd, so rstd "
                "multiplies every route from x to xhat")
    if close(dx, expected * rstd):
        return "dx has a factor rstd too many in each row"
    return None


@pytest.mark.checks("layernorm_backward")
@pytest.mark.parametrize("seed", range(3))
def test_dx_matches_finite_differences(seed):
    x, w, b, dout = case(seed)
    _, cache = ex.layernorm_forward(x, w, b)
    dx, _, _ = ex.layernorm_backward(dout, cache)
    check_shape("dx", dx, x.shape, "dx has x's shape")
    numeric = finite_differences(lambda x_: ex.layernorm_forward(x_, w, b)[0], x, dout)
    check_close("dx", dx, numeric, "finite differences", rtol=1e-5, atol=1e-7,
                hint=dx_mistake(dx, dout, cache) or "")


def swapped(name, yours, other_name, other):
    """A hint if `yours` equals what the other gradient should be."""
    if np.shape(yours) == np.shape(other) and np.allclose(yours, other, rtol=1e-6, atol=1e-9):
        return f"{name} holds what {other_name} should: are dw and db swapped?"
    return ""


@pytest.mark.checks("layernorm_backward")
@pytest.mark.parametrize("seed", range(3))
def test_dw_db_match_finite_differences(seed):
    x, w, b, dout = case(seed)
    _, cache = ex.layernorm_forward(x, w, b)
    _, dw, db = ex.layernorm_backward(dout, cache)
    sum_hint = "one value per feature: sum over every axis but the last (the batch and positions)"
    check_shape("dw", dw, w.shape, sum_hint)
    check_shape("db", db, b.shape, sum_hint)
    numeric_dw = finite_differences(lambda w_: ex.layernorm_forward(x, w_, b)[0], w, dout)
    numeric_db = finite_differences(lambda b_: ex.layernorm_forward(x, w, b_)[0], b, dout)
    check_close("dw", dw, numeric_dw, "finite differences", atol=1e-7,
                hint=swapped("dw", dw, "db", numeric_db) or "forward was out = xhat * w + b")
    check_close("db", db, numeric_db, "finite differences", atol=1e-7,
                hint=swapped("db", db, "dw", numeric_dw) or "forward was out = xhat * w + b")


@pytest.mark.checks("layernorm_backward")
def test_agrees_with_the_engine_on_any_leading_shape():
    for shape in [(7,), (4, 7), (2, 3, 7)]:
        x, w, b, dout = case(10, shape)
        _, cache = ex.layernorm_forward(x, w, b)
        yours = ex.layernorm_backward(dout, cache)
        for name, mine, engine in zip(("dx", "dw", "db"), yours, engine_backward(dout, cache)):
            check_shape(f"{name} (input shape {shape})", mine, engine.shape,
                        "dx has x's shape; dw and db one value per feature, summed over every "
                        "leading axis, however many there are")
            check_close(f"{name} (input shape {shape})", mine, engine,
                        "minitransformer.ops.layernorm_backward",
                        hint=(dx_mistake(mine, dout, cache) or "") if name == "dx" else "")
