"""Exercise 14: the recording hooks against run_with_cache, the zeroing hook against
interventions.ablate_heads (to the bit), the pattern-preserving hooks against the engine's
combine(replay(...), ablate_heads(...)). No copy of the solution here: every expected value
comes from the engine, and a failure says what is wrong and where.

The model has every size different (batch 4, 18 positions, 3 layers, 3 heads, d_head 5,
d_model 24, 40 tokens) and random biases, so that a wrong axis, a wrong head, a wrong layer
or a lost b_O changes the numbers."""
import numpy as np
import pytest

from exercises.harness import fail, load
from minitransformer import Model
from minitransformer.interventions import HeadScale, Replay, ablate_heads, combine, replay

ex = load("ex14_hooks")

B, T, L, H, E, D, V = 4, 18, 3, 3, 5, 24, 40
AXES = {0: "the batch row (axis 0)", 1: "the position (axis 1)", 2: "the head (axis 2)",
        3: "the d_head component (axis 3)"}


def random_model():
    model = Model(dict(n_layers=L, d_model=D, n_heads=H, d_head=E, n_ctx=T + 2, d_vocab=V,
                       attn_only=True, normalization_type=None, initializer_range=0.2),
                  seed=14, dtype=np.float64)
    rng = np.random.default_rng(14)
    for name, value in model.params.items():
        if ".b_" in name:                 # biases are zero at init: make b_O and b_V count
            model.params[name] = rng.normal(0.0, 0.3, value.shape)
    return model


def random_tokens(seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def pattern_names(n_layers=L):
    return [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]


def fns_of(hooks):
    return [(name, fn) for name, fns in hooks.items()
            for fn in (fns if isinstance(fns, (list, tuple)) else [fns])]


def check_hooks_dict(what, hooks, model):
    """A dict {hook point: callable or list of them}, or fail naming what is not."""
    if not isinstance(hooks, dict):
        fail(f"{what} should return a dict {{hook name: fn}}, got {type(hooks).__name__}")
    unknown = [name for name in hooks if name not in model.hook_names()]
    if unknown:
        fail(f"{what}: {unknown[0]!r} is not a hook point of the model "
             f"(model.hook_names() lists them)")
    for name, fn in fns_of(hooks):
        if not callable(fn):
            fail(f"{what}: the hook at {name} is a {type(fn).__name__}, not a function "
                 f"fn(activation, name)")


def read_only(array):
    array = np.array(array)
    array.flags.writeable = False
    return array


def forward(what, model, tokens, hooks, run=None):
    """model.forward (or `run`) with the student's hooks; an in-place edit of a read-only
    activation is named, not a traceback."""
    try:
        return (run or model.forward)(tokens, hooks=hooks)
    except ValueError as error:
        if "read-only" in str(error):
            fail(f"{what}: a hook wrote into the activation it was given ({error}): hooks "
                 f"get read-only arrays; change a copy and return it")
        raise


def same_as(array, candidates):
    """The first name in candidates {name: array} whose array equals `array` (NaN-free),
    or None."""
    for name, value in candidates.items():
        if np.shape(value) == np.shape(array) and np.allclose(array, value, rtol=0, atol=1e-10):
            return name
    return None


# ---- record_hooks -------------------------------------------------------------------------

@pytest.mark.checks("record_hooks")
def test_record_hooks_return_none():
    """A recording hook changes nothing: it returns None (a returned array counts as a
    replacement, which loss_and_grads refuses)."""
    model, tokens = random_model(), random_tokens()
    _, cache = model.run_with_cache(tokens)
    names = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre", "blocks.2.attn.hook_pattern"]
    hooks = ex.record_hooks(names, {})
    check_hooks_dict("record_hooks", hooks, model)
    for name, fn in fns_of(hooks):
        returned = fn(read_only(cache[name]), name)
        if returned is not None:
            fail(f"record_hooks: the hook at {name} returns a {type(returned).__name__}: a "
                 f"hook that only records returns None (whatever it returns replaces the "
                 f"activation, and loss_and_grads refuses replaced activations)")


@pytest.mark.checks("record_hooks")
@pytest.mark.parametrize("which", ["every hook point", "three of them"])
def test_record_hooks_keep_what_run_with_cache_keeps(which):
    model, tokens = random_model(), random_tokens()
    clean, cache = model.run_with_cache(tokens)
    names = (model.hook_names() if which == "every hook point" else
             ["blocks.2.attn.hook_pattern", "hook_embed", "blocks.1.attn.hook_z"])
    store = {}
    hooks = ex.record_hooks(names, store)
    check_hooks_dict("record_hooks", hooks, model)
    missing = [name for name in names if name not in hooks]
    if missing:
        fail(f"record_hooks({which}): no hook at {missing[0]!r} (and {len(missing) - 1} more "
             f"names): make one for every name you are given")
    logits = forward("record_hooks", model, tokens, hooks)
    if not np.array_equal(logits, clean):
        fail(f"record_hooks({which}): the logits changed (by up to "
             f"{np.abs(logits - clean).max():.2g}): a recording hook must leave the "
             f"activation alone")
    if set(store) != set(names):
        stray = sorted(set(store) - set(names))
        lost = [name for name in names if name not in store]
        if len(store) == 1 and len(names) > 1:
            fail(f"record_hooks({which}): store holds one name, {next(iter(store))!r}, for "
                 f"{len(names)} hook points: every hook wrote under the same name. Does the "
                 f"hook use the name it is called with, or a loop variable that has its "
                 f"last value by the time the hooks run?")
        fail(f"record_hooks({which}): after one forward, store "
             + (f"lacks {lost[0]!r} ({len(lost)} names in all)" if lost else "")
             + (" and " if lost and stray else "")
             + (f"holds {stray[0]!r}, which you were not asked to record" if stray else ""))
    for name in names:
        if not np.array_equal(np.asarray(store[name]), cache[name]):
            other = same_as(np.asarray(store[name]), {n: cache[n] for n in cache if n != name})
            fail(f"record_hooks({which}): store[{name!r}] is not run_with_cache's {name}"
                 + (f"; it holds {other}'s activation" if other else
                    f" (shape {np.shape(store[name])}, expected {cache[name].shape})"))


# ---- zero_head_hook -----------------------------------------------------------------------

def zeroing_mistake(yours, z, head):
    """What a zeroing of the wrong entries zeroed, in words, or None."""
    zeroed = (yours == 0) & (z != 0)
    if (yours != z)[~zeroed].any():
        return "it changes entries it should keep, and not just to zero"
    if zeroed.all():
        return f"it zeroes all of z, every head, not head {head} alone"
    for axis, what in AXES.items():
        rest = tuple(a for a in range(4) if a != axis)
        per_index = zeroed.all(axis=rest)
        touched = zeroed.any(axis=rest)
        if per_index.any() and np.array_equal(per_index, touched):
            indices = np.flatnonzero(per_index).tolist()
            index = indices[0] if len(indices) == 1 else indices
            if axis == 2:
                return f"it zeroes head {index}, not head {head}"
            return (f"it zeroes {what}, index {index}; z is (B,T,H,E) = {z.shape}, and head "
                    f"{head} is on axis 2")
    return None


@pytest.mark.checks("zero_head_hook")
def test_zero_head_hook_zeroes_one_head_of_z():
    z = read_only(np.random.default_rng(3).normal(size=(B, T, H, E)))
    name = "blocks.1.attn.hook_z"
    for head in range(H):
        hook = ex.zero_head_hook(head)
        if not callable(hook):
            fail(f"zero_head_hook({head}) should return a function fn(z, name), got "
                 f"{type(hook).__name__}")
        try:
            yours = hook(z, name)
        except ValueError as error:
            if "read-only" in str(error):
                fail(f"zero_head_hook({head}): the hook writes into z ({error}): z is "
                     f"read-only; change a copy and return that")
            raise
        if yours is None:
            fail(f"zero_head_hook({head}): the hook returns None, which keeps z as it was: "
                 f"nothing is ablated. Return the changed copy")
        yours = np.asarray(yours)
        if yours.shape != z.shape:
            fail(f"zero_head_hook({head}): the hook returns shape {yours.shape}; a "
                 f"replacement has z's shape (B,T,H,E) = {z.shape}")
        expected = ablate_heads([(1, head)])[name](z, name)     # the engine's own hook
        if not np.array_equal(yours, expected):
            mistake = zeroing_mistake(yours, z, head)
            wrong = np.argwhere(yours != expected)[0]
            fail(f"zero_head_hook({head}): the returned z differs from z with head {head} "
                 f"zeroed at entry {tuple(int(i) for i in wrong)}"
                 + (f": {mistake}" if mistake else ""))


@pytest.mark.checks("zero_head_hook")
@pytest.mark.parametrize("layer, head", [(0, 2), (1, 1), (2, 0)])
def test_zero_head_hook_is_the_engines_ablation_to_the_bit(layer, head):
    model, tokens = random_model(), random_tokens(1)
    name = f"blocks.{layer}.attn.hook_z"
    yours = forward(f"zero_head_hook({head}) at {name}", model, tokens,
                    {name: ex.zero_head_hook(head)})
    expected = model.forward(tokens, hooks=ablate_heads([(layer, head)]))
    if not np.array_equal(yours, expected):
        clean = model.forward(tokens)
        fail(f"logits with zero_head_hook({head}) at {name} differ from those with "
             f"ablate_heads([({layer}, {head})]) by up to {np.abs(yours - expected).max():.2g}"
             + ("; they are the clean model's: the hook changed nothing"
                if np.array_equal(yours, clean) else ""))


# ---- pattern_preserving_hooks -------------------------------------------------------------

@pytest.mark.checks("pattern_preserving_hooks")
def test_pattern_preserving_hooks_are_your_own():
    model, tokens = random_model(), random_tokens()
    _, cache = model.run_with_cache(tokens)
    hooks = ex.pattern_preserving_hooks(cache, 1, 2, L)
    check_hooks_dict("pattern_preserving_hooks", hooks, model)
    for name, fn in fns_of(hooks):
        if isinstance(fn, (Replay, HeadScale)):
            fail(f"pattern_preserving_hooks: the hook at {name} is the engine's "
                 f"{type(fn).__name__} (interventions.replay / ablate_heads): write these "
                 f"hooks as functions of your own")


def attention_outputs(model, tokens, cache, layer, head):
    """{mistake in words: hook_attn_out of `layer` with that mistake}, from the engine."""
    name, out = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"
    b_O = model.params[f"blocks.{layer}.attn.b_O"]
    kept = replay(cache, pattern_names(model.config.n_layers))

    def attn_out(*hooks):
        return model.run_with_cache(tokens, hooks=combine(kept, *hooks))[1][out]
    outs = {f"nothing is zeroed at {name}: does the zeroing hook return its copy?":
            cache[out],
            f"every head of layer {layer} is zeroed, not head {head} alone":
            attn_out(ablate_heads([(layer, h) for h in range(model.config.n_heads)])),
            f"layer {layer}'s whole attention output is zeroed, b_O included; only head "
            f"{head}'s output goes, b_O belongs to no head":
            np.zeros_like(cache[out]),
            f"b_O is removed too: it belongs to layer {layer}, not to head {head}; keep it":
            attn_out(ablate_heads([(layer, head)])) - b_O}
    for other in range(model.config.n_heads):
        if other != head:
            outs[f"head {other} is zeroed, not head {head}"] = attn_out(
                ablate_heads([(layer, other)]))
    return outs


@pytest.mark.checks("pattern_preserving_hooks")
@pytest.mark.parametrize("layer, head", [(0, 2), (1, 1)])
def test_pattern_preserving_hooks_are_the_engines_ablation(layer, head):
    model, tokens = random_model(), random_tokens(2)
    _, cache = model.run_with_cache(tokens)
    patterns = pattern_names()
    engine = combine(replay(cache, patterns), ablate_heads([(layer, head)]))
    expected = model.forward(tokens, hooks=engine)
    what = f"pattern_preserving_hooks(cache, {layer}, {head}, {L})"
    hooks = ex.pattern_preserving_hooks(cache, layer, head, L)
    check_hooks_dict(what, hooks, model)
    yours = forward(what, model, tokens, hooks)
    if np.allclose(yours, expected, rtol=0, atol=1e-10):
        return
    _, seen = forward(what, model, tokens, hooks, run=model.run_with_cache)
    _, engine_seen = model.run_with_cache(tokens, hooks=engine)
    full = model.run_with_cache(tokens, hooks=ablate_heads([(layer, head)]))[1]
    for l, name in enumerate(patterns):
        if same_as(seen[name], {"recorded": cache[name]}):
            continue
        other = same_as(seen[name], {f"layer {m}'s": cache[n] for m, n in enumerate(patterns)})
        if other:
            fail(f"{what}: at {name} the pattern that flows on is {other} recorded pattern, "
                 f"not layer {l}'s. Does each hook return the pattern of the name it is "
                 f"called with (not of a loop variable, which has its last value when the "
                 f"hooks run)?")
        if same_as(seen[name], {"full": full[name]}):
            fail(f"{what}: layer {l}'s pattern is recomputed after the ablation, not the "
                 f"clean run's: put the recorded pattern back at {name}")
        fail(f"{what}: at {name} the pattern is neither the clean run's nor the recomputed "
             f"one (it differs from the recorded one by up to "
             f"{np.abs(seen[name] - cache[name]).max():.2g})")
    for m in range(L):
        moved = combine(replay(cache, patterns), ablate_heads([(m, head)]))
        if m != layer and same_as(yours, {"moved": model.forward(tokens, hooks=moved)}):
            fail(f"{what}: head {head} of layer {m} is ablated, not of layer {layer}: is the "
                 f"zeroing hook at blocks.{layer}.attn.hook_z?")
    z = f"blocks.{layer}.attn.hook_z"
    if not same_as(seen[z], {"clean": cache[z], "engine": engine_seen[z]}):
        mistake = zeroing_mistake(seen[z], cache[z], head)
        fail(f"{what}: the heads' outputs at {z} are not those with head {head} zeroed"
             + (f": {mistake}" if mistake else ""))
    out = f"blocks.{layer}.hook_attn_out"
    if not np.allclose(seen[out], engine_seen[out], rtol=0, atol=1e-10):
        mistake = same_as(seen[out], attention_outputs(model, tokens, cache, layer, head))
        fail(f"{what}: layer {layer}'s attention output ({out}) is not the one with head "
             f"{head} zeroed" + (f": {mistake}" if mistake else
                                 f" (it differs by up to "
                                 f"{np.abs(seen[out] - engine_seen[out]).max():.2g})"))
    for l in range(L):
        if l != layer and not np.allclose(seen[f"blocks.{l}.attn.hook_z"],
                                          engine_seen[f"blocks.{l}.attn.hook_z"], atol=1e-10):
            fail(f"{what}: the heads' outputs of layer {l} (blocks.{l}.attn.hook_z) are not "
                 f"the engine's: only layer {layer} is ablated")
    fail(f"{what}: the logits differ from the engine's pattern-preserving ablation by up to "
         f"{np.abs(yours - expected).max():.2g}")
