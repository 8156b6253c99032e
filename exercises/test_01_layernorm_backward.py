"""Exercise 01: LayerNorm backward against finite differences and against the engine."""
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


def wrong_dx(dout, cache):
    """What dx would be with the mean term or the variance term forgotten."""
    xhat, rstd, w = cache
    dxhat = dout * w
    return {"did you forget the mean term (- mean over D of dxhat)?":
            rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True)),
            "did you forget the variance term (- xhat * mean over D of dxhat * xhat)?":
            rstd * (dxhat - dxhat.mean(-1, keepdims=True)),
            "you returned dxhat * rstd: both the mean and the variance terms are missing":
            rstd * dxhat,
            "did you forget to multiply by the gain w (dxhat = dout * w)?":
            rstd * (dout - dout.mean(-1, keepdims=True)
                    - xhat * (dout * xhat).mean(-1, keepdims=True))}


@pytest.mark.checks("layernorm_backward")
@pytest.mark.parametrize("seed", range(3))
def test_dx_matches_finite_differences(seed):
    x, w, b, dout = case(seed)
    _, cache = ex.layernorm_forward(x, w, b)
    dx, _, _ = ex.layernorm_backward(dout, cache)
    numeric = finite_differences(lambda x_: ex.layernorm_forward(x_, w, b)[0], x, dout)
    check_close("dx", dx, numeric, "finite differences", rtol=1e-5, atol=1e-7,
                mistakes=wrong_dx(dout, cache))


@pytest.mark.checks("layernorm_backward")
@pytest.mark.parametrize("seed", range(3))
def test_dw_db_match_finite_differences(seed):
    x, w, b, dout = case(seed)
    _, cache = ex.layernorm_forward(x, w, b)
    _, dw, db = ex.layernorm_backward(dout, cache)
    sum_hint = "sum over every axis but the last (the batch and position axes)"
    check_shape("dw", dw, w.shape, sum_hint)
    check_shape("db", db, b.shape, sum_hint)
    check_close("dw", dw, finite_differences(lambda w_: ex.layernorm_forward(x, w_, b)[0], w, dout),
                "finite differences", atol=1e-7, hint="forward was out = xhat * w + b")
    check_close("db", db, finite_differences(lambda b_: ex.layernorm_forward(x, w, b_)[0], b, dout),
                "finite differences", atol=1e-7, hint="forward was out = xhat * w + b")


@pytest.mark.checks("layernorm_backward")
def test_agrees_with_the_engine_on_any_leading_shape():
    for shape in [(7,), (4, 7), (2, 3, 7)]:
        x, w, b, dout = case(10, shape)
        _, cache = ex.layernorm_forward(x, w, b)
        for name, yours, engine in zip(("dx", "dw", "db"), ex.layernorm_backward(dout, cache),
                                       engine_backward(dout, cache)):
            check_close(f"{name} (input shape {shape})", yours, engine,
                        "minitransformer.ops.layernorm_backward",
                        mistakes=wrong_dx(dout, cache) if name == "dx" else None)
