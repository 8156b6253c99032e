"""What the teacher-only tests/test_exercise_mistakes_NN.py share: an exercise's reference
solution with some of its functions replaced by mistaken ones, run through the exercise's own
checks (exercises/test_NN_*.py), whose failure message is what the tests read."""
import functools
import types

import pytest


def with_mistake(solution, **replaced):
    """The solution module's public names, with `replaced` in place of some: what the checks
    see as `ex`."""
    names = {name: getattr(solution, name) for name in dir(solution) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, **replaced})


def failure_of(checks, make, monkeypatch, test, *args, **replaced):
    """The message with which check `test` (of the checks module) fails on make(**replaced),
    the solution with a mistake; a check that passes fails this test."""
    monkeypatch.setattr(checks, "ex", make(**replaced))
    with pytest.raises(pytest.fail.Exception) as failed:
        test(*args)
    return failed.value.msg


def bound(checks, solution):
    """-> (with_mistake(**replaced), failure_of(monkeypatch, test, *args, **replaced)) of one
    exercise."""
    make = functools.partial(with_mistake, solution)
    return make, functools.partial(failure_of, checks, make)
