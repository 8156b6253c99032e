"""Causal multi-head attention with explicit per-head weights, and the smeared key.

B batch, T positions, D d_model, H heads, E d_head.

Per head h (row-vector convention, as TransformerLens):
    q = x_qk W_Q[h] + b_Q[h]     k = x_qk W_K[h] + b_K[h]     v = x_v W_V[h] + b_V[h]
    pattern = softmax(q k^T / sqrt(E) + causal mask)          z = pattern v
    out = sum_h z[h] W_O[h] + b_O
The heads are stored unfused (W_Q [H,D,E]); the projections are done as one matmul over
all heads, which is only a compute detail. Each of q, k, v, the scores, the pattern, z and
the per-head results passes through a hook point (minitransformer.hooks) on its way.
"""
from collections import namedtuple
from functools import lru_cache

import numpy as np

from ..backend import array_module, device_of
from ..hooks import NO_HOOKS

AttentionCache = namedtuple(
    "AttentionCache", "qk_input v_input W_Q W_K W_V W_O alpha q k v pattern z head_mask smear replayed")
# What a layer does not compute when a hook replays its pattern or its heads' outputs, and so
# gets a zero gradient from (a replayed activation is a constant).
REPLAYED_UNUSED = {"hook_pattern": ("W_Q", "b_Q", "W_K", "b_K", "alpha"),
                   "hook_z": ("W_Q", "b_Q", "W_K", "b_K", "alpha", "W_V", "b_V")}


def _project(x, W, b):
    """x (B,T,D), W (H,D,E), b (H,E) -> (B,H,T,E), one matmul for all heads."""
    B, T, D = x.shape
    H, _, E = W.shape
    flat = x.reshape(B * T, D) @ W.transpose(1, 0, 2).reshape(D, H * E) + b.reshape(H * E)
    return flat.reshape(B, T, H, E).transpose(0, 2, 1, 3)


def _project_backward(dy, x, W):
    """dy (B,H,T,E) for y = _project(x, W, b) -> dx (B,T,D), dW (H,D,E), db (H,E)."""
    B, H, T, E = dy.shape
    D = x.shape[-1]
    dflat = dy.transpose(0, 2, 1, 3).reshape(B * T, H * E)
    dx = (dflat @ W.transpose(1, 0, 2).reshape(D, H * E).T).reshape(B, T, D)
    dW = (x.reshape(B * T, D).T @ dflat).reshape(D, H, E).transpose(1, 0, 2)
    return dx, dW, dflat.sum(0).reshape(H, E)


def causal_mask(like, T):
    """(T,T) on like's device, of like's dtype: 0 where key <= query, -inf above the diagonal.
    Made once per device, size and dtype."""
    return _causal_mask(array_module(like), device_of(like), T, like.dtype)


@lru_cache(maxsize=16)
def _causal_mask(xp, device, T, dtype):
    return xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)


def softmax_forward(scores):
    """Causal softmax over the last axis. scores (...,T,T) -> pattern (...,T,T).
    Works in place on `scores` (the caller's array is consumed) to spare the memory traffic."""
    xp = array_module(scores)
    scores += causal_mask(scores, scores.shape[-1])
    scores -= scores.max(-1, keepdims=True)
    xp.exp(scores, out=scores)
    scores /= scores.sum(-1, keepdims=True)
    return scores


def softmax_backward(dpattern, pattern, rowdot=None):
    """dpattern, pattern (...,T,T) -> dscores (...,T,T), consuming dpattern in place.
    rowdot (...,T,1) = sum_j dpattern_ij pattern_ij, if the caller has a cheaper way to it."""
    # forward was: p_ij = exp(s_ij) / sum_k exp(s_ik), so: ds_ij = p_ij (dp_ij - sum_k dp_ik p_ik)
    if rowdot is None:
        rowdot = (dpattern * pattern).sum(-1, keepdims=True)
    dpattern -= rowdot
    dpattern *= pattern
    return dpattern


def _sigmoid(xp, a):
    return 1.0 / (1.0 + xp.exp(-a))


def smear_forward(k, alpha):
    """Smeared key (paper, Argument 2): k_j <- s k_j + (1 - s) k_{j-1}, s = sigmoid(alpha[h]),
    the first position unchanged. k (B,H,T,E), alpha (H,) -> smeared k (B,H,T,E), cache."""
    xp = array_module(k)
    s = _sigmoid(xp, alpha)[:, None, None]                       # (H,1,1)
    k_prev = xp.concatenate([k[:, :, :1], k[:, :, :-1]], axis=2)  # k_{j-1}; k_0 for j = 0
    return s * k + (1.0 - s) * k_prev, (k, k_prev, s)


def smear_backward(dsmeared, cache):
    """dsmeared (B,H,T,E) -> dk (B,H,T,E), dalpha (H,)."""
    k, k_prev, s = cache
    dk = s * dsmeared
    dk[:, :, :-1] += (1.0 - s) * dsmeared[:, :, 1:]   # k_j feeds position j+1 as k_prev
    dk[:, :, 0] += (1.0 - s[:, :, 0]) * dsmeared[:, :, 0]  # ...and k_0 is its own k_prev
    dalpha = (dsmeared * (k - k_prev)).sum((0, 2, 3)) * (s * (1.0 - s))[:, 0, 0]
    return dk, dalpha


def attention_forward(qk_input, v_input, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O,
                      alpha=None, hook=NO_HOOKS, smear_forward=smear_forward, keep_pattern=True):
    """Causal multi-head attention.
    qk_input (B,T,D): what queries and keys read (shortformer: LN(x) + W_pos).
    v_input (B,T,D): what values read (LN(x)).
    W_Q, W_K, W_V (H,D,E); b_Q, b_K, b_V (H,E); W_O (H,E,D); b_O (D,).
    alpha (H,) or None: smeared-key logits; smear_forward: the smeared key's op (exercise 13
    passes its own).
    hook: the layer's hook points (minitransformer.hooks), shown as TransformerLens shows
    them: hook_q, hook_k (smeared), hook_v, hook_z (B,T,H,E); hook_attn_scores (masked with
    -inf), hook_pattern (B,H,T,T); hook_result (B,T,H,D). A replacement changes what follows.
    The interventions among them (minitransformer.interventions) are done here, and skip
    work (REPLAYED_UNUSED): a replayed hook_pattern is used instead of computing one; a
    replayed hook_z instead of the heads' outputs; head scales multiply z before hook_z's
    other hooks see it.
    keep_pattern=False: for a forward no backward follows, the computed pattern is not kept
    (cache.pattern None) unless a hook reads it, so the blocked core never writes the
    (B,H,T,T) array; z is the same to the bit.
    -> out (B,T,D), cache. cache.pattern (B,H,T,T) is what the evaluators read."""
    xp = array_module(qk_input)
    q = k = v = smear = None
    z, scales = hook.engine("hook_z")
    pattern = hook.engine("hook_pattern")[0] if z is None else None
    replayed = "hook_z" if z is not None else "hook_pattern" if pattern is not None else None
    if z is not None:                                            # (B,T,H,E) -> (B,H,T,E)
        z = xp.asarray(z, dtype=v_input.dtype).swapaxes(1, 2)
    else:
        v = _hook_heads(hook, "hook_v", xp.ascontiguousarray(_project(v_input, W_V, b_V)))
        if pattern is not None:
            pattern = xp.asarray(pattern, dtype=v_input.dtype)
            z = pattern @ v                                      # (B,H,T,E)
        else:
            q = _hook_heads(hook, "hook_q", xp.ascontiguousarray(_project(qk_input, W_Q, b_Q)))
            k = xp.ascontiguousarray(_project(qk_input, W_K, b_K))   # (B,H,T,E)
            if alpha is not None:
                k, smear = smear_forward(k, alpha)
            k = _hook_heads(hook, "hook_k", k)
            pattern, z = _attend(q, k, v, hook, keep_pattern or hook.wants("hook_pattern"))
    if pattern is not None:                                      # (B,H,T,T), z (B,H,T,E)
        hooked = hook("hook_pattern", pattern)
        if hooked is not pattern:   # a hook replaced the pattern: z follows it
            pattern, z = hooked, hooked @ v
    mask = _head_mask(scales, W_O.shape[0], xp, z.dtype)        # (H,1,1) or (B,H,1,1)
    z_out = _hook_heads(hook, "hook_z", z if mask is None else z * mask)
    out = _output(z_out, W_O, b_O, hook)                         # (B,T,D)
    return out, AttentionCache(qk_input, v_input, W_Q, W_K, W_V, W_O, alpha, q, k, v, pattern, z,
                               mask, smear, replayed)


def _head_mask(scales, n_heads, xp, dtype):
    """The product of the head scales' factors, broadcastable on z: (...,H,1,1); or None."""
    factors = None
    for scale in scales:
        f = scale.factors(n_heads, xp, dtype)
        factors = f if factors is None else factors * f
    return None if factors is None else factors[..., None, None]


def _hook_heads(hook, name, x):
    """x (B,H,T,E) through hook point `name`, which shows it as TransformerLens does, (B,T,H,E)."""
    if not hook.wants(name):
        return x
    shown = x.swapaxes(1, 2)
    hooked = hook(name, shown)
    return x if hooked is shown else hooked.swapaxes(1, 2)


def _attend(q, k, v, hook, keep_pattern=True):
    """q, k, v (B,H,T,E) -> pattern (B,H,T,T) (None if not keep_pattern), z (B,H,T,E),
    through hook_attn_scores. The scores are formed as an activation
    only when someone reads them (the blocked core never holds them whole)."""
    attend = attention_core(q)[0]
    if not hook.wants("hook_attn_scores"):
        return attend(q, k, v, keep_pattern=keep_pattern)
    T, E = q.shape[-2:]
    scores = (q @ k.swapaxes(-1, -2)) * E ** -0.5 + causal_mask(q, T)  # (B,H,T,T)
    hooked = hook("hook_attn_scores", scores)
    if hooked is scores:
        return attend(q, k, v)                   # the numbers training computes
    pattern = softmax_forward(hooked.copy())     # the copy: softmax works in place
    return pattern, pattern @ v


def _output(z, W_O, b_O, hook):
    """z (B,H,T,E) -> out (B,T,D) = sum_h z[h] W_O[h] + b_O, through hook_result (B,T,H,D),
    each head's output: formed only when someone reads it (else one matmul over all heads)."""
    B, H, T, E = z.shape
    D = W_O.shape[-1]
    if hook.wants("hook_result"):
        result = array_module(z).einsum("bhte,hed->bthd", z, W_O)           # (B,T,H,D)
        hooked = hook("hook_result", result)
        if hooked is not result:
            return hooked.sum(2) + b_O
    return (z.transpose(0, 2, 1, 3).reshape(B * T, H * E) @ W_O.reshape(H * E, D)
            ).reshape(B, T, D) + b_O


def attention_backward(dout, cache, smear_backward=smear_backward):
    """dout (B,T,D) -> dqk_input (B,T,D) or None (pattern or z replayed), dv_input (B,T,D),
    grads: dict with W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O and alpha (smeared key only);
    zeros for what a replayed layer did not use (REPLAYED_UNUSED).
    smear_backward: the backward of the forward's smear_forward."""
    c = cache
    xp = array_module(dout)
    B, T, D = dout.shape
    H, E, _ = c.W_O.shape
    dflat = dout.reshape(B * T, D)
    z_out = c.z if c.head_mask is None else c.z * c.head_mask
    grads = {"b_O": dflat.sum(0),
             "W_O": (z_out.transpose(0, 2, 1, 3).reshape(B * T, H * E).T @ dflat).reshape(H, E, D)}
    if c.replayed is not None:
        shapes = {"W_Q": c.W_Q.shape, "W_K": c.W_K.shape, "W_V": c.W_V.shape, "b_Q": (H, E),
                  "b_K": (H, E), "b_V": (H, E), "alpha": None if c.alpha is None else c.alpha.shape}
        grads.update({n: xp.zeros(shapes[n], dtype=dout.dtype)
                      for n in REPLAYED_UNUSED[c.replayed] if shapes[n] is not None})
    if c.replayed == "hook_z":   # the heads' outputs were a constant: nothing flows to the inputs
        return None, xp.zeros_like(c.v_input), grads
    dz = xp.ascontiguousarray(
        (dflat @ c.W_O.reshape(H * E, D).T).reshape(B, T, H, E).transpose(0, 2, 1, 3))
    if c.head_mask is not None:
        dz = dz * c.head_mask
    if c.replayed == "hook_pattern":   # the pattern was a constant: only the values get gradients
        dv = c.pattern.swapaxes(-1, -2) @ dz                     # (B,H,T,E)
        dv_input, grads["W_V"], grads["b_V"] = _project_backward(dv, c.v_input, c.W_V)
        return None, dv_input, grads
    dq, dk, dv = attention_core(dz)[1](dz, c.q, c.k, c.v, c.pattern, c.z)
    dv_input, grads["W_V"], grads["b_V"] = _project_backward(dv, c.v_input, c.W_V)
    if c.smear is not None:
        dk, grads["alpha"] = smear_backward(dk, c.smear)
    dqk_q, grads["W_Q"], grads["b_Q"] = _project_backward(dq, c.qk_input, c.W_Q)
    dqk_k, grads["W_K"], grads["b_K"] = _project_backward(dk, c.qk_input, c.W_K)
    return dqk_q + dqk_k, dv_input, grads


# ---- the attention core: scores -> causal softmax -> z, and its backward -------------------
# attend_forward/attend_backward are the readable versions. On NumPy the model uses the
# blocked twins, which compute the same numbers (tests/test_attention_blocked.py) but skip
# the masked upper triangle and work on cache-sized pieces (docs/backends-and-speed.md). On
# a GPU the readable ones are also the fast ones: a handful of whole-array kernels, where the
# blocks would cost ~60 kernel launches per layer and batch chunk for no cache to fit.

def attention_core(like):
    """(forward, backward) of the attention core for like's backend."""
    if array_module(like) is np:
        return attend_forward_blocked, attend_backward_blocked
    return attend_forward, attend_backward


def attend_forward(q, k, v, keep_pattern=True):
    """q, k, v (...,T,E) -> pattern (...,T,T) (None if not keep_pattern: no backward
    follows), z (...,T,E)."""
    scores = q @ k.swapaxes(-1, -2)                               # (...,T,T)
    scores *= q.shape[-1] ** -0.5
    pattern = softmax_forward(scores)                             # in place
    return (pattern if keep_pattern else None), pattern @ v


def attend_backward(dz, q, k, v, pattern, z):
    """dz (...,T,E) -> dq, dk, dv (...,T,E)."""
    # forward was: z = pattern @ v, so: dpattern = dz @ v^T ; dv = pattern^T @ dz
    dv = pattern.swapaxes(-1, -2) @ dz
    dpattern = dz @ v.swapaxes(-1, -2)                            # (...,T,T)
    # sum_j dpattern_ij pattern_ij = dz_i . (sum_j pattern_ij v_j) = dz_i . z_i
    dscores = softmax_backward(dpattern, pattern, (dz * z).sum(-1, keepdims=True))
    # forward was: scores = q @ k^T * E^-1/2
    scale = q.shape[-1] ** -0.5
    return (dscores @ k) * scale, (dscores.swapaxes(-1, -2) @ q) * scale, dv


def _blocks(B, T, batch_chunk, query_block):
    """(batch slice, query start, query end): query rows [t0,t1) see keys [0,t1) only."""
    for b0 in range(0, B, batch_chunk):
        for t0 in range(0, T, query_block):
            yield slice(b0, b0 + batch_chunk), t0, min(t0 + query_block, T)


def attend_forward_blocked(q, k, v, batch_chunk=4, query_block=64, keep_pattern=True):
    """Same as attend_forward for q, k, v (B,H,T,E), one block of query rows at a time.
    keep_pattern=False -> (None, the same z): each block's softmax is made in its scores'
    own buffer, and the (B,H,T,T) pattern, 32 MB per layer at B=32, T=256, is never written."""
    xp = array_module(q)
    B, H, T, E = q.shape
    pattern = xp.zeros((B, H, T, T), dtype=q.dtype) if keep_pattern else None
    z = xp.empty_like(q)
    q_scaled = q * E ** -0.5                                      # scale the small side once
    for b, t0, t1 in _blocks(B, T, batch_chunk, query_block):
        scores = q_scaled[b, :, t0:t1] @ k[b, :, :t1].swapaxes(-1, -2)   # (b,H,t1-t0,t1)
        scores[..., t0:] += causal_mask(q, t1 - t0)               # only the diagonal square
        scores -= scores.max(-1, keepdims=True)
        rows = pattern[b, :, t0:t1, :t1] if keep_pattern else scores   # a view: exp writes in place
        xp.exp(scores, out=rows)
        rows *= 1.0 / rows.sum(-1, keepdims=True)
        xp.matmul(rows, v[b, :, :t1], out=z[b, :, t0:t1])
    return pattern, z


def attend_backward_blocked(dz, q, k, v, pattern, z, batch_chunk=4, query_block=64):
    """Same as attend_backward, one block of query rows at a time."""
    xp = array_module(q)
    B, H, T, E = q.shape
    dq, dk, dv = xp.empty_like(q), xp.zeros_like(k), xp.zeros_like(v)
    rowdot = (dz * z).sum(-1, keepdims=True)      # sum_j dp_ij p_ij = dz_i . z_i, (B,H,T,1)
    for b, t0, t1 in _blocks(B, T, batch_chunk, query_block):
        p = pattern[b, :, t0:t1, :t1]                              # (b,H,t1-t0,t1)
        dz_rows = dz[b, :, t0:t1]
        dv[b, :, :t1] += p.swapaxes(-1, -2) @ dz_rows
        dscores = dz_rows @ v[b, :, :t1].swapaxes(-1, -2)
        dscores -= rowdot[b, :, t0:t1]
        dscores *= p
        xp.matmul(dscores, k[b, :, :t1], out=dq[b, :, t0:t1])
        dk[b, :, :t1] += dscores.swapaxes(-1, -2) @ q[b, :, t0:t1]
    dq *= E ** -0.5
    dk *= E ** -0.5
    return dq, dk, dv
