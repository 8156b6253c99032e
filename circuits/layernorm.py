"""LayerNorm as the circuit analyses see it, in one place: folded into the weights that read
its output, or frozen at its value on given tokens.

    LN(x) W = ((x - mean x) / std(x)) (w * W) + b W

The centring and the gain w are linear and fold exactly into a reader W (weights.py: the
QK and OV circuits). The division by std(x) is a positive number per position that depends
on the whole residual stream: the weight-based circuits drop it (take it as 1); the
activation-based analyses (paths.py, the copying evaluator) freeze it at its value on the
tokens they run, read with the engine's own LayerNorm (minitransformer.ops.layernorm).
"""
import numpy as np

from minitransformer.ops.layernorm import layernorm_forward


def fold(W, gain, ln_bias, bias):
    """Fold LN(x) = centre(x) / std * gain + ln_bias into the reader W (...,D,N) and its
    bias (...,N): centring subtracts each column's mean over D (x - mean x = x C, C W is W
    with its mean over rows removed). -> (W, bias), 1/std dropped."""
    folded = gain[:, None] * W
    return folded - folded.mean(-2, keepdims=True), bias + ln_bias @ W


def rstd(resid):
    """1 / std of each position's residual stream (...,D) -> (...,1), LN's eps included: the
    one non-linear factor of LayerNorm, as the engine's forward computes it."""
    _, (_, value, _) = layernorm_forward(resid, 1.0, 0.0)
    return value


def frozen(params, cfg, name, resid):
    """LN `name` with its 1/std frozen at resid's (B,T,D): -> (linear map x -> centre(x) *
    rstd * w, bias b (D,)); the identity and 0 without LayerNorm."""
    if cfg.normalization_type != "LN":
        return (lambda x: x), np.zeros(cfg.d_model)
    scale = rstd(resid)                                                     # (B,T,1)
    w = params[name + ".w"]
    return (lambda x: (x - x.mean(-1, keepdims=True)) * scale * w), params[name + ".b"]
