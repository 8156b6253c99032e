"""Exercise 01: LayerNorm backward, checked against finite differences.

Paper: "Model Details: Small models" (the paper's models are standard transformers, and
LayerNorm sits before every attention layer and the unembedding). Before reverse-engineering
heads, we make sure we can trust every gradient that trains them.

What to compute: the backward pass of LayerNorm over the last axis,

    mean = x.mean(-1)   var = ((x - mean)^2).mean(-1)   rstd = (var + eps)^-1/2
    xhat = (x - mean) * rstd                            out = xhat * w + b

given dout = dLoss/dout, return dx, dw, db.

Shapes: dout (..., D), cache = (xhat (..., D), rstd (..., 1), w (D,))
        -> dx (..., D), dw (D,), db (D,)   (dw and db summed over every leading axis)

Run: python -m exercises.ex01_layernorm_backward     Check: make exercise N=1
Hints, one step at a time: python -m exercises.hint 1 (then --step 2)
"""
import numpy as np

from exercises import common

EPS = 1e-5


def layernorm_forward(x, w, b):
    """x (..., D), w (D,), b (D,) -> out (..., D), cache (given: the forward pass)."""
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    rstd = ((centred ** 2).mean(-1, keepdims=True) + EPS) ** -0.5     # (..., 1)
    xhat = centred * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dw (D,), db (D,)."""
    xhat, rstd, w = cache
    # BEGIN SOLUTION: dx, dw, db from dout and the cache
    # Hint 1: dw and db first: `out = xhat * w + b`, and every leading axis (the batch, the
    #   positions) adds to them. For dx, mind that each x in a row moves the row's mean and
    #   its rstd, so dx is not just the gradient at xhat times rstd.
    # Hint 2: with `dxhat = dout * w`, x_k reaches the loss three ways: through its own
    #   x_k - mean, through the mean (which moves every xhat of the row by -rstd / D), and
    #   through rstd (`d rstd / d x_k = -rstd^3 (x_k - mean) / D`, that is `-rstd^2 xhat_k /
    #   D`). Add the three routes: the last two each give one number per row, a mean over
    #   the row, the second weighted by xhat.
    # Hint 3: `dw = (dout * xhat).sum(leading)`, `db = dout.sum(leading)` with `leading =
    #   tuple(range(dout.ndim - 1))`, and `dx = rstd * (dxhat - mean(dxhat) - xhat *
    #   mean(dxhat * xhat))`, each mean over D with keepdims=True, so that it broadcasts
    #   along the row.
    leading = tuple(range(dout.ndim - 1))
    dw = (dout * xhat).sum(leading)
    db = dout.sum(leading)
    dxhat = dout * w
    # the two subtracted terms: the row's mean and its rstd both depend on every x_k
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dw, db
    # END SOLUTION


def gradient_check(seed=0, shape=(2, 3, 8)):
    """Compare layernorm_backward with central differences on random inputs -> {name: max
    relative error}."""
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(size=shape), "w": rng.normal(size=shape[-1]) + 1.0,
              "b": rng.normal(size=shape[-1])}
    dout = rng.normal(size=shape)                 # a random upstream gradient, never ones
    return common.gradient_check(layernorm_forward, layernorm_backward, inputs, dout)


if __name__ == "__main__":
    common.print_gradient_check(gradient_check())
