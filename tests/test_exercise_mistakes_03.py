"""Exercise 03's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is a reference function (numerical_grad, gradient_errors, model_cases) with one thing
wrong; the exercise's own checks (exercises/test_03_model_gradient_check.py) are run on it
and must fail with a message that names the problem. Among them the check that cannot catch
a broken backward (dout all ones on both sides), and the slower checks, which must stop at
once naming the faster check that failed. The mistaken variants are near copies of the
solution, which the students' tests must not hold: they live here."""
import functools
import time

import numpy as np
import pytest
from hypothesis import strategies as st

import exercises.test_03_model_gradient_check as checks
from exercises.solutions import ex03_model_gradient_check as solution
import mistakes  # noqa: E402  (tests/mistakes.py)

numerical_grad = solution.numerical_grad      # what the mistaken gradient_errors below call


def with_mistake(**replaced):
    ex = mistakes.with_mistake(solution, **replaced)
    if "gradient_errors" not in replaced:         # the solution's, on this numerical_grad
        ex.gradient_errors = errors_with()
    if "check_case" not in replaced:
        ex.check_case = lambda case, tolerance=1e-5: check_case(ex, case, tolerance)
    return ex


def check_case(ex, case, tolerance):
    model = ex.tiny_model(case)
    rng = np.random.default_rng(case["seed"])
    tokens = rng.integers(0, solution.VOCAB, (2, 5))
    dlogits = rng.uniform(-1, 1, (2, 5, solution.VOCAB))
    errors = ex.gradient_errors(model, tokens, dlogits)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tolerance, f"{case}: d{worst} is off by {errors[worst]:.1e}"
    return errors


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts with no check remembered as passed."""
    monkeypatch.setattr(checks, "PASSED", {})


failure_of = functools.partial(mistakes.failure_of, checks, with_mistake)


def finite(step="central", divide=2, dout_used=True, in_place=True, restore=True, flat=False):
    """numerical_grad with one thing done otherwise."""
    def numerical_grad(f, x, dout, h=1e-6):
        grad = np.zeros_like(x)
        flat_x = x.reshape(-1) if in_place else x.flatten()
        grad_flat = grad.reshape(-1)
        weight = dout if dout_used else 1.0
        for i in range(flat_x.size):
            kept = flat_x[i]
            flat_x[i] = kept + h
            up = np.sum(f() * weight)
            flat_x[i] = kept - h if step == "central" else kept
            down = np.sum(f() * weight)
            if restore:
                flat_x[i] = kept
            grad_flat[i] = (up - down) / (divide * h if step == "central" else h)
        return grad_flat.copy() if flat else grad
    return numerical_grad


def errors_with(dout="given", floor=1e-2, copies=False):
    """gradient_errors with one thing done otherwise, on the module's numerical_grad."""
    def gradient_errors(model, tokens, dlogits):
        d = np.ones_like(dlogits) if dout == "ones" else dlogits
        grads = model.backward(d, model.forward_train(tokens)[1])
        errors = {}
        for name, param in model.params.items():
            numeric = numerical_grad(lambda: model.forward_train(tokens)[0],
                                     param.copy() if copies else param, d)
            scale = max(np.abs(numeric).max(), floor)
            errors[name] = float(np.abs(grads[name] - numeric).max() / scale)
        return errors
    return gradient_errors


def cases(n_layers=(1, 2), positional=("shortformer", "standard", "none"), seed=None,
          keys=None):
    """model_cases with fewer options, a fixed seed, or other keys."""
    def model_cases():
        fields = {"n_layers": st.sampled_from(list(n_layers)), "attn_only": st.booleans(),
                  "normalization_type": st.sampled_from(["LN", None]),
                  "positional_embedding_type": st.sampled_from(list(positional)),
                  "smeared_key": st.booleans(),
                  "seed": st.just(seed) if seed is not None else st.integers(0, 2**31 - 1)}
        if keys:
            fields = {keys.get(k, k): v for k, v in fields.items() if keys.get(k, k)}
        return st.fixed_dictionaries(fields)
    return model_cases


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    checks.test_numerical_grad_of_a_known_function()
    checks.test_numerical_grad_is_central()
    checks.test_a_correct_model_passes(monkeypatch)
    for broken in checks.BROKEN:
        with monkeypatch.context() as patched:           # the broken engine only for this
            checks.test_a_broken_backward_is_caught(patched, broken)
    checks.test_the_strategy_draws_valid_and_varied_models()
    checks.test_the_property_holds_on_random_models(monkeypatch)


def test_the_module_solution_passes_as_it_is():
    """The reference module itself, as EXERCISE_SOURCE=solutions gives it (its gradient_errors
    on its own numerical_grad), passes the checks that do not spy."""
    checks.ex, kept = solution, checks.ex
    try:
        checks.test_numerical_grad_of_a_known_function()
        checks.test_the_strategy_draws_valid_and_varied_models()
    finally:
        checks.ex = kept


@pytest.mark.parametrize("mistake, test, says", [
    (finite(divide=1), "test_numerical_grad_of_a_known_function",
     ["twice the derivative", "2h apart"]),
    (finite(divide=4), "test_numerical_grad_of_a_known_function", ["half the derivative"]),
    (finite(dout_used=False), "test_numerical_grad_of_a_known_function",
     ["derivative of sum(f())", "dout is left out", "all ones"]),
    (finite(in_place=False), "test_numerical_grad_of_a_known_function",
     ["0 everywhere", "never saw your change", "a view of it, not a copy"]),
    (finite(restore=False), "test_numerical_grad_of_a_known_function",
     ["left x changed", "put each entry back"]),
    (finite(flat=True), "test_numerical_grad_of_a_known_function",
     ["numerical_grad: yours has shape (12,), expected (3, 4)", "shaped like x"]),
    (finite(step="forward"), "test_numerical_grad_of_a_known_function",
     ["off by h/2 times the second derivative", "one-sided difference", "x + h and x - h"]),
    (finite(step="forward"), "test_numerical_grad_is_central",
     ["off by h/2 times the second derivative", "one-sided difference"]),
], ids=["over h", "over 4h", "no dout", "a copy", "not restored", "flat", "one-sided",
        "one-sided on a quadratic"])
def test_numerical_grad_mistakes_are_named(monkeypatch, mistake, test, says):
    message = failure_of(monkeypatch, getattr(checks, test), numerical_grad=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("test, args", [
    ("test_a_correct_model_passes", ("monkeypatch",)),
    ("test_a_broken_backward_is_caught", ("monkeypatch", "LayerNorm's backward without its "
                                                         "mean term")),
    ("test_the_property_holds_on_random_models", ("monkeypatch",))])
def test_a_wrong_numerical_grad_stops_the_slower_checks_at_once(monkeypatch, test, args):
    args = [monkeypatch if a == "monkeypatch" else a for a in args]
    start = time.perf_counter()
    message = failure_of(monkeypatch, getattr(checks, test), *args,
                         numerical_grad=finite(divide=1))
    assert time.perf_counter() - start < 1.0
    assert "not run: your numerical_grad fails test_numerical_grad_of_a_known_function first" \
        in message and "twice the derivative" in message, message


def test_a_dout_of_ones_cannot_catch_a_broken_backward_and_is_named(monkeypatch):
    """dout all ones on both sides: the correct model passes, LayerNorm's missing mean term is
    still caught, but a backward reading dlogits one position off is not, and the message
    says why."""
    monkeypatch.setattr(checks, "ex", with_mistake(gradient_errors=errors_with(dout="ones")))
    checks.test_a_correct_model_passes(monkeypatch)
    with monkeypatch.context() as patched:               # the broken engine only for this
        checks.test_a_broken_backward_is_caught(patched,
                                                "LayerNorm's backward without its mean term")
    message = failure_of(monkeypatch, checks.test_a_broken_backward_is_caught, monkeypatch,
                         "a backward that reads each position's dlogits from the position "
                         "before", gradient_errors=errors_with(dout="ones"))
    for phrase in ["reports only", "gives model.backward a dout of all ones, not the dlogits",
                   "cannot tell positions apart"]:
        assert phrase in message, message


@pytest.mark.parametrize("mistake, says", [
    (errors_with(floor=0.0), ["on the engine's correct backward", "b_K", "floor"]),
    (errors_with(copies=True), ["given copies, not the model's own arrays"]),
], ids=["no floor", "copies"])
def test_gradient_errors_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_a_correct_model_passes, monkeypatch,
                         gradient_errors=mistake)
    for phrase in says:
        assert phrase in message, message


def test_a_wrong_gradient_errors_stops_the_property_test_at_once(monkeypatch):
    message = failure_of(monkeypatch, checks.test_the_property_holds_on_random_models,
                         monkeypatch, gradient_errors=errors_with(floor=0.0))
    assert ("the property test not run: your numerical_grad and gradient_errors fail "
            "test_a_correct_model_passes first") in message and "floor" in message, message


def test_missing_parameters_are_named(monkeypatch):
    def only_matrices(model, tokens, dlogits):
        errors = errors_with()(model, tokens, dlogits)
        return {k: v for k, v in errors.items() if ".W_" in k}
    message = failure_of(monkeypatch, checks.test_a_correct_model_passes, monkeypatch,
                         gradient_errors=only_matrices)
    assert "one error per parameter" in message and "missing" in message, message


@pytest.mark.parametrize("mistake, says", [
    (cases(seed=0), ["gave seed only {0}", "a seed drawn from a range"]),
    (cases(positional=("shortformer", "standard")), ["positional types"]),
    (cases(n_layers=(2,)), ["gave n_layers only {2}"]),
    (cases(keys={"smeared_key": None}), ["should draw the keys"]),
    (cases(keys={"positional_embedding_type": "positional"}), ["should draw the keys"]),
], ids=["fixed seed", "two positional types", "one depth", "no smeared_key", "a wrong key"])
def test_model_cases_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_the_strategy_draws_valid_and_varied_models,
                         model_cases=mistake)
    for phrase in says:
        assert phrase in message, message


def test_an_invalid_configuration_is_named(monkeypatch):
    def invalid():
        return st.fixed_dictionaries({"n_layers": st.just(1), "attn_only": st.booleans(),
                                      "normalization_type": st.just("RMS"),
                                      "positional_embedding_type": st.just("standard"),
                                      "smeared_key": st.booleans(),
                                      "seed": st.integers(0, 9)})
    message = failure_of(monkeypatch, checks.test_the_strategy_draws_valid_and_varied_models,
                         model_cases=invalid)
    assert "not a valid configuration" in message, message
