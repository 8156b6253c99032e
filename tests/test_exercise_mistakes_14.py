"""The checks of exercise 14 (hooks) and of exercise 12's pattern-preserving ablation catch
the mistakes students make. Each test here gives a check (exercises/test_14_hooks.py,
exercises/test_12_ablation_icl.py) the reference solution with one mistake in it and asserts
that the check fails with a message naming the mistake; a correct variant (zeroing at
hook_result instead of hook_z, multiplying by a mask) must pass. Teachers' file: the mistaken
variants are near copies of the solution, which the students' tests must not hold."""
import types

import numpy as np
import pytest

import exercises.test_12_ablation_icl as checks12
import exercises.test_14_hooks as checks14
from exercises.solutions import ex12_ablation_icl as solution12
from exercises.solutions import ex14_hooks as solution14
from minitransformer.interventions import ablate_heads, combine, replay


def with_mistake(solution, **replaced):
    """The solution module's functions as an `ex`, some of them replaced."""
    names = {name: getattr(solution, name) for name in dir(solution) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, **replaced})


def check_fails(monkeypatch, checks, ex, test, *args, says):
    """Run check `test` (of the module `checks`) on `ex`: it must fail, its message holding
    every phrase in `says`."""
    monkeypatch.setattr(checks, "ex", ex)
    with pytest.raises(pytest.fail.Exception) as failure:
        test(*args)
    message = failure.value.msg
    for phrase in says:
        assert phrase in message, f"the check's message does not say {phrase!r}: {message}"


def check_passes(monkeypatch, checks, ex, test, *args):
    monkeypatch.setattr(checks, "ex", ex)
    test(*args)


# ---- exercise 14: record_hooks ------------------------------------------------------------

def record_returning_the_activation(names, store):
    def keep(activation, name):
        store[name] = activation
        return activation
    return {name: keep for name in names}


def record_under_the_loop_variable(names, store):
    hooks = {}
    for name in names:
        hooks[name] = lambda activation, _: store.__setitem__(name, activation)
    return hooks


def record_the_first_name_only(names, store):
    return {names[0]: lambda activation, name: store.__setitem__(name, activation)}


def record_under_short_names(names, store):
    def keep(activation, name):
        store[name.split(".")[-1]] = activation
    return {name: keep for name in names}


def record_a_copy(names, store):               # right too
    def keep(activation, name):
        store[name] = activation.copy()
    return {name: keep for name in names}


@pytest.mark.parametrize("mistake, test, args, says", [
    (record_returning_the_activation, "test_record_hooks_return_none", (),
     ["returns a ndarray", "returns None"]),
    (record_under_the_loop_variable, "test_record_hooks_keep_what_run_with_cache_keeps",
     ("every hook point",), ["store holds one name", "loop variable"]),
    (record_the_first_name_only, "test_record_hooks_keep_what_run_with_cache_keeps",
     ("three of them",), ["no hook at 'hook_embed'"]),
    (record_under_short_names, "test_record_hooks_keep_what_run_with_cache_keeps",
     ("three of them",), ["lacks 'blocks.2.attn.hook_pattern'", "not asked to record"]),
], ids=lambda x: getattr(x, "__name__", None))
def test_record_hooks_mistakes_fail(monkeypatch, mistake, test, args, says):
    check_fails(monkeypatch, checks14, with_mistake(solution14, record_hooks=mistake),
                getattr(checks14, test), *args, says=says)


@pytest.mark.parametrize("which", ["every hook point", "three of them"])
def test_recording_a_copy_passes(monkeypatch, which):
    ex = with_mistake(solution14, record_hooks=record_a_copy)
    check_passes(monkeypatch, checks14, ex, checks14.test_record_hooks_return_none)
    check_passes(monkeypatch, checks14, ex,
                 checks14.test_record_hooks_keep_what_run_with_cache_keeps, which)


# ---- exercise 14: zero_head_hook ----------------------------------------------------------

def zero_in_place(head):
    def zero(z, name):
        z[:, :, head] = 0.0
        return z
    return zero


def zero_the_position(head):
    def zero(z, name):
        z = z.copy()
        z[:, head] = 0.0
        return z
    return zero


def zero_the_d_head_component(head):
    def zero(z, name):
        z = z.copy()
        z[..., head] = 0.0
        return z
    return zero


def zero_every_head(head):
    return lambda z, name: np.zeros_like(z)


def zero_without_returning(head):
    def zero(z, name):
        z = z.copy()
        z[:, :, head] = 0.0
    return zero


def zero_the_next_head(head):
    def zero(z, name):
        z = z.copy()
        z[:, :, (head + 1) % z.shape[2]] = 0.0
        return z
    return zero


def zero_by_a_mask(head):                      # right too
    def zero(z, name):
        keep = np.ones(z.shape[2])
        keep[head] = 0.0
        return z * keep[:, None]
    return zero


@pytest.mark.parametrize("mistake, says", [
    (zero_in_place, ["writes into z", "read-only", "copy"]),
    (zero_the_position, ["zeroes the position (axis 1)", "head 0 is on axis 2"]),
    (zero_the_d_head_component, ["the d_head component (axis 3)"]),
    (zero_every_head, ["zeroes all of z, every head"]),
    (zero_without_returning, ["returns None", "nothing is ablated"]),
    (zero_the_next_head, ["zeroes head 1, not head 0"]),
], ids=lambda x: getattr(x, "__name__", None))
def test_zero_head_hook_mistakes_fail(monkeypatch, mistake, says):
    check_fails(monkeypatch, checks14, with_mistake(solution14, zero_head_hook=mistake),
                checks14.test_zero_head_hook_zeroes_one_head_of_z, says=says)


@pytest.mark.parametrize("mistake, says", [
    (zero_in_place, ["read-only"]),
    (zero_the_position, ["differ from those with ablate_heads([(1, 1)])"]),
    (zero_without_returning, ["the hook changed nothing"]),
], ids=lambda x: getattr(x, "__name__", None))
def test_zero_head_hook_mistakes_fail_in_the_forward(monkeypatch, mistake, says):
    check_fails(monkeypatch, checks14, with_mistake(solution14, zero_head_hook=mistake),
                checks14.test_zero_head_hook_is_the_engines_ablation_to_the_bit, 1, 1, says=says)


def test_zeroing_by_a_mask_passes(monkeypatch):
    ex = with_mistake(solution14, zero_head_hook=zero_by_a_mask)
    check_passes(monkeypatch, checks14, ex, checks14.test_zero_head_hook_zeroes_one_head_of_z)
    for layer, head in [(0, 2), (1, 1), (2, 0)]:
        check_passes(monkeypatch, checks14, ex,
                     checks14.test_zero_head_hook_is_the_engines_ablation_to_the_bit, layer, head)


# ---- exercise 14: pattern_preserving_hooks ------------------------------------------------

def put_back(cache):
    return lambda pattern, name: cache[name]


def patterns_of(cache, n_layers, layers=None):
    return {f"blocks.{l}.attn.hook_pattern": put_back(cache)
            for l in (range(n_layers) if layers is None else layers)}


def preserving_with(zero_hook, at="hook_z"):
    """pattern_preserving_hooks with another zeroing hook (at another point)."""
    def hooks(cache, layer, head, n_layers):
        return {**patterns_of(cache, n_layers), f"blocks.{layer}.attn.{at}": zero_hook(head)}
    return hooks


def preserving_by_the_engine(cache, layer, head, n_layers):
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    return combine(replay(cache, names), ablate_heads([(layer, head)]))


def preserving_with_the_loop_variable(cache, layer, head, n_layers):
    hooks = {}
    for l in range(n_layers):
        hooks[f"blocks.{l}.attn.hook_pattern"] = \
            lambda pattern, name: cache[f"blocks.{l}.attn.hook_pattern"]
    hooks[f"blocks.{layer}.attn.hook_z"] = solution14.zero_head_hook(head)
    return hooks


def preserving_nothing(cache, layer, head, n_layers):
    return {f"blocks.{layer}.attn.hook_z": solution14.zero_head_hook(head)}


def preserving_without_the_layers_output(cache, layer, head, n_layers):
    return {**patterns_of(cache, n_layers),
            f"blocks.{layer}.hook_attn_out": lambda out, name: np.zeros_like(out)}


def preserving_without_b_O(cache, layer, head, n_layers):
    b_O = checks14.random_model().params[f"blocks.{layer}.attn.b_O"]
    return {**patterns_of(cache, n_layers),
            f"blocks.{layer}.attn.hook_z": solution14.zero_head_hook(head),
            f"blocks.{layer}.hook_attn_out": lambda out, name: out - b_O}


def preserving_at_the_last_layer(cache, layer, head, n_layers):
    return {**patterns_of(cache, n_layers),
            f"blocks.{n_layers - 1}.attn.hook_z": solution14.zero_head_hook(head)}


def zero_head_result(head):                    # right too: hook_result (B,T,H,D), b_O apart
    def zero(result, name):
        result = result.copy()
        result[:, :, head] = 0.0
        return result
    return zero


def preserving_the_later_layers(cache, layer, head, n_layers):   # right too
    return {**patterns_of(cache, n_layers, range(layer + 1, n_layers)),
            f"blocks.{layer}.attn.hook_z": solution14.zero_head_hook(head)}


def test_the_engines_interventions_fail(monkeypatch):
    check_fails(monkeypatch, checks14,
                with_mistake(solution14, pattern_preserving_hooks=preserving_by_the_engine),
                checks14.test_pattern_preserving_hooks_are_your_own,
                says=["the engine's Replay", "functions of your own"])


@pytest.mark.parametrize("mistake, says", [
    (preserving_with_the_loop_variable,
     ["at blocks.0.attn.hook_pattern", "layer 2's recorded pattern, not layer 0's"]),
    (preserving_nothing, ["layer 1's pattern is recomputed", "put the recorded pattern back"]),
    (preserving_without_the_layers_output, ["whole attention output is zeroed, b_O included"]),
    (preserving_without_b_O, ["b_O is removed too"]),
    (preserving_with(zero_every_head), ["blocks.0.attn.hook_z", "every head"]),
    (preserving_with(zero_without_returning), ["nothing is zeroed at blocks.0.attn.hook_z"]),
    (preserving_with(zero_in_place), ["read-only"]),
    (preserving_with(zero_the_position), ["zeroes the position (axis 1), index 2"]),
    (preserving_with(zero_the_next_head), ["zeroes head 0, not head 2"]),
    (preserving_at_the_last_layer, ["head 2 of layer 2 is ablated, not of layer 0"]),
], ids=lambda x: getattr(x, "__name__", "mistake"))
def test_pattern_preserving_hooks_mistakes_fail(monkeypatch, mistake, says):
    check_fails(monkeypatch, checks14, with_mistake(solution14, pattern_preserving_hooks=mistake),
                checks14.test_pattern_preserving_hooks_are_the_engines_ablation, 0, 2, says=says)


@pytest.mark.parametrize("variant", [preserving_with(zero_head_result, at="hook_result"),
                                     preserving_with(zero_by_a_mask),
                                     preserving_the_later_layers])
def test_right_pattern_preserving_variants_pass(monkeypatch, variant):
    ex = with_mistake(solution14, pattern_preserving_hooks=variant)
    check_passes(monkeypatch, checks14, ex, checks14.test_pattern_preserving_hooks_are_your_own)
    for layer, head in [(0, 2), (1, 1)]:
        check_passes(monkeypatch, checks14, ex,
                     checks14.test_pattern_preserving_hooks_are_the_engines_ablation, layer, head)


# ---- exercise 12: pattern_preserving_losses, icl_score, icl_change ------------------------

def losses_with(zero_hook=None, at="hook_z", patterns="each", extra=None, engine=False):
    """pattern_preserving_losses with one thing done otherwise."""
    def pattern_preserving_losses(model, tokens, layer, head):
        _, cache = model.run_with_cache(tokens)
        names = [name for name in cache if name.endswith("hook_pattern")]
        if engine:
            return model.per_token_loss(tokens, hooks=combine(replay(cache, names),
                                                              ablate_heads([(layer, head)])))
        hooks = {}
        if patterns == "each":
            hooks = {name: put_back(cache) for name in names}
        elif patterns == "loop variable":
            hooks = {name: (lambda pattern, _: cache[name]) for name in names}
        hooks[f"blocks.{layer}.attn.{at}"] = (zero_hook or solution14.zero_head_hook)(head)
        if extra:
            hooks.update(extra(model, layer))
        return model.per_token_loss(tokens, hooks=hooks)
    return pattern_preserving_losses


def without_b_O(model, layer):
    b_O = model.params[f"blocks.{layer}.attn.b_O"]
    return {f"blocks.{layer}.hook_attn_out": lambda out, name: out - b_O}


def without_the_layers_output(model, layer):
    return {f"blocks.{layer}.hook_attn_out": lambda out, name: np.zeros_like(out)}


@pytest.mark.parametrize("mistake, says", [
    (losses_with(engine=True), ["uses the engine's interventions", "Replay at blocks.0",
                                "hook functions of your own"]),
    (losses_with(patterns="none"), ["the patterns are recomputed after the ablation"]),
    (losses_with(patterns="loop variable"), ["every layer gets the last layer's recorded "
                                             "pattern", "loop variable"]),
    (losses_with(zero_in_place), ["read-only"]),
    (losses_with(zero_without_returning), ["nothing is zeroed", "blocks.0.attn.hook_z"]),
    (losses_with(zero_every_head), ["every head of layer 0 is zeroed"]),
    (losses_with(zero_the_next_head), ["head 0 is zeroed, not head 2"]),
    (losses_with(extra=without_the_layers_output), ["whole attention output is zeroed, b_O "
                                                    "included"]),
    (losses_with(extra=without_b_O), ["b_O of layer 0 is removed too"]),
], ids=lambda x: "mistake")
def test_pattern_preserving_losses_mistakes_fail(monkeypatch, mistake, says):
    check_fails(monkeypatch, checks12, with_mistake(solution12, pattern_preserving_losses=mistake),
                checks12.test_pattern_preserving_losses_match_the_engine, 0, 2, says=says)


def test_zeroing_the_position_fails_naming_it(monkeypatch):
    check_fails(monkeypatch, checks12,
                with_mistake(solution12, pattern_preserving_losses=losses_with(zero_the_position)),
                checks12.test_pattern_preserving_losses_match_the_engine, 0, 2,
                says=["losses without head 0.2: yours differs from the engine's", "at entry",
                      "position 2 is zeroed (axis 1"])


def test_a_mistake_without_a_name_fails_naming_where(monkeypatch):
    """A mistake the check has no words for still fails, naming the quantity and the entry."""
    check_fails(monkeypatch, checks12,
                with_mistake(solution12,
                             pattern_preserving_losses=losses_with(zero_the_d_head_component)),
                checks12.test_pattern_preserving_losses_match_the_engine, 0, 2,
                says=["losses without head 0.2: yours differs from the engine's", "at entry"])


@pytest.mark.parametrize("variant", [losses_with(zero_head_result, at="hook_result"),
                                     losses_with(zero_by_a_mask)], ids=["hook_result", "mask"])
def test_right_pattern_preserving_losses_pass(monkeypatch, variant):
    ex = with_mistake(solution12, pattern_preserving_losses=variant)
    for layer, head in [(0, 2), (1, 1)]:
        check_passes(monkeypatch, checks12, ex,
                     checks12.test_pattern_preserving_losses_match_the_engine, layer, head)


def icl_score_off_by_one(losses, early, late, half_window=1):
    return checks12.off_by_one(losses, early, late, half_window)


def icl_score_reversed(losses, early, late, half_window=1):
    return -solution12.icl_score(losses, early, late, half_window)


@pytest.mark.parametrize("mistake, says", [
    (icl_score_off_by_one, ["from column i", "column 0 holds context index 1"]),
    (icl_score_reversed, ["late minus early"]),
], ids=lambda x: getattr(x, "__name__", None))
def test_icl_score_mistakes_fail(monkeypatch, mistake, says):
    check_fails(monkeypatch, checks12, with_mistake(solution12, icl_score=mistake),
                checks12.test_icl_score_matches_the_library, says=says)


def icl_change_reversed(model, tokens, early, late, half_window=1):
    return -solution12.icl_change(model, tokens, early, late, half_window)


def icl_change_transposed(model, tokens, early, late, half_window=1):
    return solution12.icl_change(model, tokens, early, late, half_window).T


@pytest.mark.parametrize("mistake, says", [
    (icl_change_reversed, ["ablated minus clean"]),
    (icl_change_transposed, ["(n_layers, n_heads), change[layer, head]"]),
], ids=lambda x: getattr(x, "__name__", None))
def test_icl_change_mistakes_fail(monkeypatch, mistake, says):
    check_fails(monkeypatch, checks12, with_mistake(solution12, icl_change=mistake),
                checks12.test_icl_change_against_the_engine, says=says)
