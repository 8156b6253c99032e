"""Interventions are hooks: small builders of the `hooks=` dicts that Model.forward,
run_with_cache, per_token_loss and loss_and_grads take.

    model.forward(tokens, hooks=ablate_heads([(1, 2)]))          # zero head 1.2's output
    model.forward(tokens, hooks=scale_heads({0: [1, 0.5, 1, 1]}))   # scale each head's output
    _, cache = model.run_with_cache(tokens)
    kept = combine(replay(cache, ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]),
                   ablate_heads([(1, 2)]))                       # the paper's pattern-preserving
    model.per_token_loss(tokens, hooks=kept)                     # ablation of head 1.2
    seen = {}
    model.forward(tokens, hooks=record(["blocks.0.attn.hook_pattern"], seen))   # keep one

A hook is fn(activation, name) -> None (keep it) or a replacement (minitransformer.hooks).
The builders' hooks are such functions too, and the engine also knows what they mean, where
it applies them itself (ENGINE_POINTS): at a layer's hook_pattern a Replay means that layer
makes no queries, keys or scores; at its hook_z a Replay means no values or pattern either,
and HeadScales multiply each head's output. So those cost less than the plain forward, and
loss_and_grads knows their gradients (ops.attention: a replayed activation is a constant,
and what it makes unused gets a zero gradient). Any other hook that returns a replacement
is refused by loss_and_grads: the backward does not run through arbitrary functions.
"""
import numpy as np

from .backend import array_module

ENGINE_POINTS = ("hook_pattern", "hook_z")   # an attention layer's: where the engine applies these itself


class Replay:
    """A hook that returns a recorded activation: Replay(value)(activation, name) -> value,
    which must have the activation's shape (a pattern (B,H,T,T), a z (B,T,H,E), ...)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, activation, name):
        return self.value

    def __repr__(self):
        return f"Replay(shape {tuple(self.value.shape)})"


class HeadScale:
    """A hook at blocks.{l}.attn.hook_z that multiplies each head's output z (B,T,H,E) by a
    factor: scale (H,) for every sequence, or (B,H), one row per sequence (a different head
    ablated in each row, say); or zero=(h, ...): those heads' outputs zeroed."""

    def __init__(self, scale=None, zero=()):
        self.scale, self.zero = scale, tuple(int(h) for h in zero)

    def factors(self, n_heads, xp, dtype):
        """-> the multiplier (H,) or (B,H) on the backend xp."""
        if self.scale is not None:
            return xp.asarray(self.scale, dtype=dtype)
        factors = np.ones(n_heads, dtype=dtype)
        factors[list(self.zero)] = 0.0
        return xp.asarray(factors)

    def __call__(self, z, name):                         # z (B,T,H,E)
        f = self.factors(z.shape[2], array_module(z), z.dtype)
        return z * f[..., None, :, None]

    def __repr__(self):
        return f"HeadScale(zero={self.zero})" if self.scale is None else \
            f"HeadScale(scale shape {np.shape(self.scale)})"


def ablate_heads(heads):
    """[(layer, head), ...] -> hooks that zero those heads' outputs (their hook_z): a full
    ablation, where every later pattern is recomputed; combined with replay(...) of the
    patterns, the pattern-preserving one."""
    by_layer = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    return {f"blocks.{l}.attn.hook_z": HeadScale(zero=h) for l, h in sorted(by_layer.items())}


def scale_heads(factors):
    """{layer: (H,) or (B,H)} -> hooks that multiply each head's output in those layers."""
    return {f"blocks.{int(l)}.attn.hook_z": HeadScale(scale=f) for l, f in factors.items()}


def record(names, into):
    """-> hooks that keep the activation at each hook point in `names` in into[name] (as it
    flows on: read-only on NumPy, no copy), and change nothing."""
    def keep(activation, name):
        into[name] = activation
    return {name: keep for name in names}


def replay(cache, names):
    """-> hooks that replace each named activation by cache[name] (a run_with_cache cache,
    or any {hook name: array}): a hook_pattern replays that layer's attention pattern, a
    hook_z its heads' outputs (what W_O reads), anything else is a plain replacement."""
    missing = [n for n in names if n not in cache]
    if missing:
        raise ValueError(f"replay: {', '.join(missing)} not in the cache")
    return {name: Replay(cache[name]) for name in names}


def combine(*hook_dicts):
    """Several hooks dicts -> one; hooks at the same point run in the order given."""
    out = {}
    for hooks in hook_dicts:
        for name, fns in hooks.items():
            out.setdefault(name, []).extend(hook_list(fns))
    return out


def hook_list(fns):
    """A hook point's hooks, given as one function or a list or tuple of them -> a list."""
    return list(fns) if isinstance(fns, (list, tuple)) else [fns]


def is_engine_point(name):
    return name.endswith(ENGINE_POINTS)


def engine_hooks(fns, name):
    """The leading hooks at `name` that the engine applies itself -> (replayed value or None,
    [HeadScale, ...]); a one-line error where they are out of order (a Replay first, then
    HeadScales, then any other hooks) or of a kind the point does not take."""
    replayed, scales, rest = None, [], False
    for i, fn in enumerate(fns):
        if isinstance(fn, Replay) and i == 0:
            replayed = fn.value
        elif isinstance(fn, HeadScale) and not rest and name.endswith("hook_z"):
            scales.append(fn)
        elif isinstance(fn, (Replay, HeadScale)):
            raise ValueError(f"hooks: {name}: {fn!r} must come first (a replay, then head scales, "
                             f"then other hooks), and head scales go at a hook_z")
        else:
            rest = True
    return replayed, scales
