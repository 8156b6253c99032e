"""LayerNorm over the last axis, as TransformerLens's LayerNorm (eps 1e-5, biased variance)."""
from ..hooks import NO_HOOKS

EPS = 1e-5


def layernorm_forward(x, w, b, hook=NO_HOOKS):
    """x (...,D), w (D,), b (D,) -> out (...,D), cache. Hook points as TransformerLens's:
    hook_scale (...,1) the std sqrt(var + eps), hook_normalized (...,D) before w and b."""
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(-1, keepdims=True)     # (...,1)
    rstd = (variance + EPS) ** -0.5                             # (...,1)
    if hook.wants("hook_scale"):
        scale = 1.0 / rstd
        seen = hook("hook_scale", scale)
        if seen is not scale:     # replaced; else rstd stays bit for bit what it was
            rstd = 1.0 / seen
    xhat = hook("hook_normalized", centred * rstd)
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dout, cache):
    """dout (...,D) -> dx (...,D), dw (D,), db (D,)."""
    xhat, rstd, w = cache
    axes = tuple(range(dout.ndim - 1))
    dw = (dout * xhat).sum(axes)
    db = dout.sum(axes)
    dxhat = dout * w
    # forward was: xhat = (x - mean) * rstd; both mean and rstd depend on every x in the row,
    # which gives the two subtracted terms.
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dw, db
