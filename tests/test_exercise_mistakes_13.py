"""Exercise 13's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference smear_keys or smear_keys_backward with one thing wrong (or three at
once); the exercise's own checks (exercises/test_13_smeared_keys.py) are run on it and must
fail with a message that names the problem, and the training checks must fail at once,
naming the check that failed, without training a model. The mistaken variants are near
copies of the solution, which the students' tests must not hold: they live here."""
import functools
import time

import numpy as np
import pytest

import exercises.test_13_smeared_keys as checks
from exercises.solutions import ex13_smeared_keys as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


def no_training(*args, **kwargs):
    raise AssertionError("a model was trained although the smear fails its checks")


def with_mistake(**replaced):
    return mistakes.with_mistake(solution, **{"train_one_layer": no_training, **replaced})


failure_of = functools.partial(mistakes.failure_of, checks, with_mistake)


def sigmoid(alpha):
    return (1.0 / (1.0 + np.exp(-alpha)))[:, None, None]


def forward(previous="first", s_of=sigmoid, axis=2):
    """smear_keys with position 0's previous key `previous` ("first": k_0, "zero", or "next":
    the keys mixed with the next one), s from s_of, shifting along `axis`."""
    def smear_keys(k, alpha):
        s = s_of(alpha)
        first = [slice(None)] * 4
        first[axis] = slice(0, 1)
        rest = [slice(None)] * 4
        rest[axis] = slice(0, -1)
        if previous == "next":
            later = [slice(None)] * 4
            later[axis] = slice(1, None)
            last = [slice(None)] * 4
            last[axis] = slice(-1, None)
            k_prev = np.concatenate([k[tuple(later)], k[tuple(last)]], axis=axis)
        else:
            head = k[tuple(first)] if previous == "first" else np.zeros_like(k[tuple(first)])
            k_prev = np.concatenate([head, k[tuple(rest)]], axis=axis)
        return s * k + (1.0 - s) * k_prev, (k, k_prev, s)
    return smear_keys


def backward(next_route=True, own_route=True, sigmoid_derivative=True, swap=False, sign=1,
             dalpha_axes=(0, 2, 3)):
    """smear_keys_backward with routes left out, s and 1 - s swapped, dalpha's sign or its
    summed axes changed."""
    def smear_keys_backward(dsmeared, cache):
        k, k_prev, s = cache
        here, there = (1.0 - s, s) if swap else (s, 1.0 - s)
        dk = here * dsmeared
        if next_route:
            dk[:, :, :-1] += there * dsmeared[:, :, 1:]
        if own_route:
            dk[:, :, 0] += there[:, :, 0] * dsmeared[:, :, 0]
        dalpha = sign * (dsmeared * (k - k_prev)).sum(dalpha_axes)
        if sigmoid_derivative:
            dalpha = dalpha * (s * (1.0 - s))[:, 0, 0]
        return dk, dalpha
    return smear_keys_backward


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    checks.test_forward_matches_the_engine()
    checks.test_backward_matches_finite_differences_and_the_engine()
    checks.fail_unless_the_smear_passes_its_checks("the model")


@pytest.mark.parametrize("mistake, says", [
    (forward(previous="zero"), ["position 0 is changed", "must stay k_0", "not be mixed with "
                                                                          "zeros"]),
    (forward(s_of=lambda a: sigmoid(-a)), ["1 - s the previous one, not the other way round"]),
    (forward(previous="next"), ["mixed with the next one"]),
    (forward(axis=3), ["d_head components (axis 3), not positions (axis 2)"]),
    (forward(axis=0), ["examples of the batch (axis 0)"]),
    (forward(s_of=lambda a: 1.0 / (1.0 + np.exp(-a))), ["could not be broadcast",
                                                        "one value per head",
                                                        "on the head axis (1)"]),
], ids=["zero-padded", "s swapped", "next key", "d_head axis", "batch axis", "s unshaped"])
def test_forward_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_forward_matches_the_engine, smear_keys=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("mistake, says", [
    (backward(next_route=False), ["dk: yours differs from finite differences",
                                  "every position but the last", "position j + 1's previous"]),
    (backward(own_route=False), ["dk: yours differs", "at position 0 only",
                                 "one route more"]),
    (backward(sigmoid_derivative=False), ["dalpha: yours differs",
                                          "lacks the sigmoid's derivative"]),
    (backward(swap=True), ["s and 1 - s swapped"]),
    (backward(sign=-1), ["dalpha", "wrong sign"]),
    (backward(dalpha_axes=(1, 2, 3), sigmoid_derivative=False),
     ["dalpha: yours has shape (2,), expected (3,)", "every axis of k but the head's"]),
], ids=["no j+1 route", "no own route at 0", "no sigmoid derivative", "s swapped",
        "dalpha sign", "dalpha over the heads"])
def test_backward_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_backward_matches_finite_differences_and_the_engine,
                         smear_keys_backward=mistake)
    for phrase in says:
        assert phrase in message, message


def test_a_zero_padded_pair_that_agrees_with_itself_fails_against_the_engine(monkeypatch):
    """Forward zero-padded and backward without k_0's own route: consistent with each other
    (finite differences agree), so only the engine tells, naming position 0."""
    message = failure_of(monkeypatch, checks.test_backward_matches_finite_differences_and_the_engine,
                         smear_keys=forward(previous="zero"),
                         smear_keys_backward=backward(own_route=False))
    assert "minitransformer's smear_backward" in message and "position 0 only" in message, message


THREE_BUGS = dict(smear_keys=forward(previous="zero"),
                  smear_keys_backward=backward(next_route=False, sigmoid_derivative=False))


def test_three_bugs_at_once_fail_every_check_naming_one_bug_at_a_time(monkeypatch):
    """The mix that once passed 'forms an induction head' (prefix matching 0.69 at 800k):
    the forward's check names position 0; the gradient check says the forward is wrong
    first; with the forward fixed it names dk's missing route, and with that fixed, dalpha's
    missing sigmoid derivative."""
    assert "position 0 is changed" in failure_of(
        monkeypatch, checks.test_forward_matches_the_engine, **THREE_BUGS)
    gradient_check = checks.test_backward_matches_finite_differences_and_the_engine
    message = failure_of(monkeypatch, gradient_check, **THREE_BUGS)
    assert "your smear_keys differs from the engine's" in message, message
    message = failure_of(monkeypatch, gradient_check,
                         smear_keys_backward=THREE_BUGS["smear_keys_backward"])
    assert "every position but the last" in message, message
    message = failure_of(monkeypatch, gradient_check,
                         smear_keys_backward=backward(sigmoid_derivative=False))
    assert "lacks the sigmoid's derivative" in message, message


@pytest.mark.parametrize("replaced", [
    dict(smear_keys=forward(previous="zero")),
    dict(smear_keys_backward=backward(next_route=False)),
    dict(smear_keys_backward=backward(own_route=False)),
    dict(smear_keys_backward=backward(sigmoid_derivative=False)),
    THREE_BUGS,
], ids=["zero-padded", "no j+1 route", "no own route", "no sigmoid derivative", "all three"])
@pytest.mark.parametrize("training", ["test_a_one_layer_smeared_model_forms_an_induction_head",
                                      "test_the_one_layer_control_does_not"])
def test_the_training_checks_fail_at_once_naming_the_failed_check(monkeypatch, tmp_path,
                                                                 replaced, training):
    start = time.perf_counter()
    message = failure_of(monkeypatch, getattr(checks, training), tmp_path, **replaced)
    assert time.perf_counter() - start < 5.0
    assert "not trained" in message, message
    failed = ("test_forward_matches_the_engine" if "smear_keys" in replaced else
              "test_backward_matches_finite_differences_and_the_engine")
    assert f"your smear fails {failed} first" in message, message


def test_a_stub_still_fails_with_not_implemented(monkeypatch, tmp_path):
    def stub(*args):
        raise NotImplementedError("exercise 13: write this")
    monkeypatch.setattr(checks, "ex", with_mistake(smear_keys_backward=stub))
    with pytest.raises(NotImplementedError):
        checks.test_the_one_layer_control_does_not(tmp_path)
