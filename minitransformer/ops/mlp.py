"""The MLP block: W_in, activation, W_out."""
import math

import numpy as np

from ..backend import array_module
from ..hooks import NO_HOOKS
from .linear import linear_forward, linear_backward

_C = math.sqrt(2.0 / math.pi)


def gelu_new_forward(x):
    """GPT-2's GELU, tanh form (TransformerLens 'gelu_new'): x (...) -> out (...), cache."""
    # the readable form is 0.5 x (1 + tanh(C (x + 0.044715 x^3))); computed in place, in
    # the same order (so to the same bits), it makes 3 arrays of x's size instead of 9
    t = 0.044715 * x
    t *= x
    t *= x
    t += x
    t *= _C
    array_module(x).tanh(t, out=t)
    out = t + 1.0
    out *= 0.5 * x
    return out, (x, t)


def gelu_new_backward(dout, cache):
    """dout (...) -> dx (...)."""
    x, t = cache
    # forward was: 0.5 x (1 + tanh(u)), u = C (x + 0.044715 x^3)
    du_dx = _C * (1.0 + 3 * 0.044715 * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def relu_forward(x):
    """x (...) -> max(x, 0) (...), cache."""
    positive = x > 0
    return x * positive, positive


def relu_backward(dout, cache):
    """dout (...) -> dx (...)."""
    return dout * cache


_ACTIVATIONS = {"gelu_new": (gelu_new_forward, gelu_new_backward),
                "relu": (relu_forward, relu_backward)}


def mlp_forward(x, W_in, b_in, W_out, b_out, act_fn="gelu_new", hook=NO_HOOKS):
    """x (B,T,D), W_in (D,M), W_out (M,D) -> out (B,T,D), cache.
    hook: the block's hook points hook_pre and hook_post (B,T,M) (minitransformer.hooks)."""
    act_forward, _ = _ACTIVATIONS[act_fn]
    pre, in_cache = linear_forward(x, W_in, b_in)
    pre = hook("hook_pre", pre)                            # (B,T,M)
    post, act_cache = act_forward(pre)
    post = hook("hook_post", post)                         # (B,T,M)
    out, out_cache = linear_forward(post, W_out, b_out)    # (B,T,D)
    return out, (in_cache, act_cache, out_cache, act_fn, pre, post)


def mlp_forward_by_sequence(x, W_in, b_in, W_out, b_out, act_fn="gelu_new"):
    """mlp_forward's out for a forward no backward follows (NumPy), one sequence at a time,
    without a cache: x (B,T,D) -> out (B,T,D). NumPy multiplies (B,T,D) @ (D,M) as B products
    (T,D) @ (D,M), so these are the same products and the same numbers, to the bit
    (tests/test_lean_forward.py); a sequence's (T,M) hidden activations stay in the CPU's
    cache for the activation's passes instead of going out to memory and back."""
    out = np.empty(x.shape[:-1] + W_out.shape[-1:], dtype=np.result_type(x, W_in, W_out))
    for i in range(len(x)):
        out[i:i + 1] = mlp_forward(x[i:i + 1], W_in, b_in, W_out, b_out, act_fn)[0]
    return out


def mlp_backward(dout, cache):
    """dout (B,T,D) -> dx (B,T,D), dW_in, db_in, dW_out, db_out."""
    in_cache, act_cache, out_cache, act_fn, _, _ = cache
    _, act_backward = _ACTIVATIONS[act_fn]
    dpost, dW_out, db_out = linear_backward(dout, out_cache)
    dpre = act_backward(dpost, act_cache)
    dx, dW_in, db_in = linear_backward(dpre, in_cache)
    return dx, dW_in, db_in, dW_out, db_out
