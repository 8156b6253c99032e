"""What the exercise tests share: which implementation they check, and checks that say in
plain words what is wrong.

EXERCISE_SOURCE picks the code under test:
    unset or "exercises"   the student's exercises/exNN_name.py      (make exercise N=4)
    "solutions"            the reference exercises/solutions/...     (make solutions, CI)
    a folder               <folder>/exNN_name.py (tests/test_exercises.py checks fresh stubs)
EXERCISE_FAST=1 gives the slow exercises (4 and 13) their reduced budget (make solutions, CI).

Each test names the functions it checks, @pytest.mark.checks("layernorm_backward"), so that
a notebook's check cell (notebook_check) runs the tests of one function, right after it.
"""
import importlib
import importlib.util
import os
import pathlib

import numpy as np
import pytest


HERE = pathlib.Path(__file__).resolve().parent
FAST = os.environ.get("EXERCISE_FAST", "0") not in ("", "0")


def load(name):
    """The module under test, e.g. load("ex01_layernorm_backward")."""
    source = os.environ.get("EXERCISE_SOURCE", "exercises")
    if source in ("", "exercises"):
        return importlib.import_module(f"exercises.{name}")
    if source == "solutions":
        return importlib.import_module(f"exercises.solutions.{name}")
    path = pathlib.Path(source) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"exercises_under_test.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fail(message):
    """Fail the test with `message` alone: no traceback into the test's own code."""
    pytest.fail(message, pytrace=False)


def check_shape(name, yours, shape, hint=""):
    yours = np.asarray(yours)
    if yours.shape != tuple(shape):
        fail(f"{name}: yours has shape {yours.shape}, expected {tuple(shape)}"
             + (f"; {hint}" if hint else ""))


def check_close(name, yours, expected, against="the reference", rtol=1e-5, atol=1e-8,
                mistakes=None, hint=""):
    """Pass if yours is close to expected (NaN where expected is NaN); else fail naming the
    worst entry. mistakes: {explanation: what that mistake would give}; the explanation of
    the first one yours matches is given, else `hint`."""
    expected = np.asarray(expected, dtype=np.float64)
    check_shape(name, yours, expected.shape)
    yours = np.asarray(yours, dtype=np.float64)
    if np.allclose(yours, expected, rtol=rtol, atol=atol, equal_nan=True):
        return
    gap = np.array(np.abs(yours - expected))          # an array even for scalars
    gap[np.isnan(expected) & np.isnan(yours)] = 0.0
    gap[np.isnan(gap)] = np.inf                       # NaN on one side only
    worst = np.unravel_index(np.argmax(gap), gap.shape) if gap.ndim else ()
    where = f" at entry {tuple(int(i) for i in worst)}" if worst else ""
    message = (f"{name}: yours differs from {against} by {gap[worst]:.2g}{where} "
               f"(yours {yours[worst]:.6g}, expected {expected[worst]:.6g})")
    for explanation, wrong in (mistakes or {}).items():
        wrong = np.asarray(wrong, dtype=np.float64)
        if wrong.shape == yours.shape and np.allclose(yours, wrong, rtol=rtol, atol=atol,
                                                      equal_nan=True):
            fail(f"{message}; {explanation}")
    fail(message + (f"; {hint}" if hint else ""))


class CheckFailed(AssertionError):
    """A notebook's check found something wrong; the message says what."""


def checked_functions(test):
    """The exercise functions a test function checks: the names in its checks marks."""
    return [name for mark in getattr(test, "pytestmark", []) if mark.name == "checks"
            for name in mark.args]


class Definitions:
    """A notebook's names, looked up when a check runs (the function checked is the one its
    cell defined last): what `ex` is in the tests when a notebook runs them."""

    def __init__(self, namespace):
        self._namespace = namespace

    def __getattr__(self, name):
        if name.startswith("__"):                  # copy, pickle and pytest probe these
            raise AttributeError(name)
        try:
            return self._namespace[name]
        except KeyError:
            raise AttributeError(f"{name} is not defined: run its cell first") from None


class OneFunction:
    """pytest plugin: keep the tests that check `function`, give them `definitions` as `ex`,
    and record each test's outcome as (test name, report, exception info)."""

    def __init__(self, function, definitions):
        self.function, self.definitions, self.outcomes = function, definitions, []

    def pytest_collection_modifyitems(self, config, items):
        chosen = [item for item in items if self.function in checked_functions(item.function)]
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen
        for item in chosen:
            item.module.ex = self.definitions

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = (yield).get_result()
        if report.when == "call" or not report.passed:
            self.outcomes.append((item.name, report, call.excinfo))


def notebook_check(exercise, namespace):
    """-> check(function) for a notebook of `exercise` ("ex01_layernorm_backward"): it runs
    the tests of exercises/test_01_*.py that check `function` (those of make exercise N=1)
    on the notebook's definitions (namespace: its globals()), prints a line per test that
    fails or skips, and raises the first failure: the stub's NotImplementedError, an error
    of the student's code, or CheckFailed with the test's message."""
    test_file = HERE / f"test_{exercise[2:]}.py"
    definitions = Definitions(namespace)

    def check(function):
        run = OneFunction(function, definitions)
        pytest.main(["-p", "no:terminal", "-p", "no:cacheprovider", str(test_file)],
                    plugins=[run])
        if not run.outcomes:
            raise CheckFailed(f"no test in {test_file.name} checks {function!r}")
        for name, report, excinfo in run.outcomes:
            if not report.passed:
                print(f"{report.outcome} {name}: {first_line(excinfo)}")
        failed = [(name, excinfo) for name, report, excinfo in run.outcomes if report.failed]
        passed = sum(report.passed for _, report, _ in run.outcomes)
        total = len(failed) + passed
        if not failed:
            print(f"{function}: " + ("its one check passes" if passed == 1
                                     else f"all {passed} checks pass"))
            return
        print(f"{function}: " + ("its one check fails:" if total == 1
                                 else f"{len(failed)} of {total} checks fail; the first:"))
        name, excinfo = failed[0]
        if isinstance(excinfo.value, pytest.fail.Exception):
            raise CheckFailed(f"{name}: {excinfo.value.msg}") from None
        raise excinfo.value.with_traceback(frames_from(excinfo.tb, test_file)) from None
    return check


def first_line(excinfo):
    """An exception's first line, as "TypeError: message" (a failed check: its message)."""
    error = excinfo.value
    outcome = isinstance(error, (pytest.fail.Exception, pytest.skip.Exception))
    text = error.msg if outcome else f"{excinfo.typename}: {error}"
    return text.strip().splitlines()[0] if text.strip() else excinfo.typename


def frames_from(traceback, path):
    """The traceback from its first frame in `path` on (pytest's own frames left out)."""
    frame = traceback
    while frame is not None and frame.tb_frame.f_code.co_filename != str(path):
        frame = frame.tb_next
    return frame or traceback
