"""Hook points, TransformerLens-style: every activation the forward names passes through
one, where a user's hook can read it or replace it, and where run_with_cache records it.

    logits = model.forward(tokens, hooks={"blocks.1.attn.hook_z": fn})

fn(activation, name) sees the activation in TransformerLens's shape, read-only (NumPy); it
returns None to leave it alone, or a replacement of the same shape, which is what the rest of
the forward computes with. A point may have a list of hooks, run in order.
Model.hook_names() lists the names of a model; minitransformer.interventions builds hooks
for ablations and replays.
"""
import numpy as np

from .backend import array_module
from .interventions import engine_hooks, hook_list, is_engine_point


class HookPoints:
    """The hook points of one forward pass. hooks: {full name: fn(activation, name)};
    record: a dict, or None, that keeps every activation as it flows on (after its hook).
    `replaced` lists the names whose hook returned a replacement, for the backward to refuse."""

    def __init__(self, hooks=None, record=None, prefix="", replaced=None):
        self.hooks = {name: hook_list(fns) for name, fns in (hooks or {}).items()}
        self.record = record
        self.prefix = prefix
        self.replaced = [] if replaced is None else replaced

    def scope(self, prefix):
        """The same hook points seen from inside a module: names relative to `prefix`
        ("blocks.0.attn."), so an op names its activations "hook_z", "hook_pattern"."""
        return HookPoints(self.hooks, self.record, self.prefix + prefix, self.replaced)

    def wants(self, name):
        """Whether anyone reads `name`: an op forms an activation its fast path skips (the
        attention scores, each head's result) only then."""
        return self.record is not None or self.prefix + name in self.hooks

    def engine(self, name):
        """-> (replayed value or None, [HeadScale, ...]): what the hooks at `name` ask the
        engine itself to do (minitransformer.interventions); (None, []) where nothing."""
        return engine_hooks(self.hooks.get(self.prefix + name, ()), self.prefix + name)

    def __call__(self, name, x):
        """x through hook point `name` -> x itself, or the hooks' replacement. At the points
        where the engine applies replays and head scales itself, it skips those hooks."""
        if not self.hooks and self.record is None:
            return x
        full = self.prefix + name
        fns = self.hooks.get(full, ())
        if fns and is_engine_point(full):
            replayed, scales = engine_hooks(fns, full)
            fns = fns[(replayed is not None) + len(scales):]
        for fn in fns:
            new = fn(_read_only(x), full)
            if new is not None:
                x = _replacement(full, x, new)
                self.replaced.append(full)
        if self.record is not None:
            self.record[full] = x
        return x


def _read_only(x):
    """A read-only view (NumPy), so a hook that edits its argument in place, and would
    change the forward behind the backward's back, fails at once: return a changed copy."""
    if isinstance(x, np.ndarray):
        x = x.view()
        x.flags.writeable = False
    return x


def _replacement(name, x, new):
    """A hook's return value as an array like x (same backend, dtype and shape)."""
    xp = array_module(x)
    try:
        new = xp.asarray(new, dtype=x.dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"hook {name}: returned {type(new).__name__}, not an array of "
                         f"shape {x.shape} ({e})") from None
    if new.shape != x.shape:
        raise ValueError(f"hook {name}: returned shape {new.shape}, expected {x.shape} (the "
                         f"activation's); return None to keep the activation")
    return new


NO_HOOKS = HookPoints()
