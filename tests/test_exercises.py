"""The classroom exercises (exercises/) cannot rot: the committed stubs are the ones
generated from the reference solutions, every stub fails its tests with
NotImplementedError (so each test exercises the student's code), and every reference
solution passes its tests. The exercise tests run in a subprocess with EXERCISE_FAST=1
(the reduced training budgets of exercises 4 and 13): about 40 s on 2 cores."""
import ast
import importlib
import importlib.util
import io
import os
import pathlib
import re
import subprocess
import sys
import tokenize
import xml.etree.ElementTree as ElementTree

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"


def make_stubs():
    spec = importlib.util.spec_from_file_location("make_stubs", EXERCISES / "make_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_exercise_tests(source, report):
    """pytest exercises/ against `source` ("solutions" or a folder of stubs) -> (return
    code, output, [(test id, outcome, message)] from the JUnit report)."""
    env = dict(os.environ, EXERCISE_SOURCE=str(source), EXERCISE_FAST="1",
               OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}", str(EXERCISES)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    cases = []
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                message = (child.get("message") or "") + "\n" + (child.text or "")
        cases.append((name, outcome, message))
    return done.returncode, done.stdout + done.stderr, cases


def test_committed_stubs_are_generated_from_the_solutions():
    stale = make_stubs().stale_stubs()
    assert not stale, (f"{', '.join(p.name for p in stale)} differ from the stubs generated "
                       f"from exercises/solutions/: run python -m exercises.make_stubs and "
                       f"commit the result (a student's filled-in copy also shows up here)")


def test_every_stub_fails_its_tests_with_not_implemented(tmp_path):
    make_stubs().write_stubs(tmp_path)
    _, output, cases = run_exercise_tests(tmp_path, tmp_path / "stubs.xml")
    assert cases, f"no exercise tests ran:\n{output[-3000:]}"
    passed = [name for name, outcome, _ in cases if outcome == "passed"]
    assert not passed, f"these tests pass on the bare stubs, so they check nothing: {passed}"
    other = [(name, message.strip().splitlines()[:1]) for name, outcome, message in cases
             if outcome in ("failure", "error") and "NotImplementedError" not in message]
    assert not other, f"these tests fail on the stubs, but not with NotImplementedError: {other}"
    numbers = {p.name[2:4] for p in (EXERCISES / "solutions").glob("ex[0-9][0-9]_*.py")}
    reached = {name.split("test_")[1][:2] for name, outcome, _ in cases
               if outcome in ("failure", "error")}
    assert numbers <= reached, f"no test of exercise(s) {sorted(numbers - reached)} reaches a stub"


def test_every_solution_passes(tmp_path):
    code, output, cases = run_exercise_tests("solutions", tmp_path / "solutions.xml")
    failed = [name for name, outcome, _ in cases if outcome in ("failure", "error")]
    assert code == 0 and not failed, (f"reference solutions fail {failed}:\n{output[-4000:]}")


def code_spans(text):
    """The `code spans` of a hint, whitespace squeezed."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]


def prose(source):
    """What a reader of a module takes in as text: its docstrings and comments, whitespace
    squeezed."""
    tree = ast.parse(source)
    docstrings = [ast.get_docstring(node) or "" for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))]
    comments = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT]
    return " ".join(" ".join(docstrings + comments).split())


def test_every_marked_block_has_a_nudge_and_no_stub_shows_the_answer():
    """Hints come in steps (exercises/hint.py): each block has at least a first one, a
    nudge. The stub's text (its docstrings and comments, above all the one at the top)
    shows neither what the later steps give away (their `code`) nor a line of the
    reference code."""
    tools = make_stubs()
    for path in tools.solution_files():
        text = prose((EXERCISES / path.name).read_text())
        for block in tools.blocks(path.read_text(), str(path)):
            where = f"{path.name}:{block.lineno}"
            assert block.hints, f"{where}: a marked block without a hint (# Hint 1: ...)"
            for span in (s for hint in block.hints[1:] for s in code_spans(hint)):
                assert span not in text, f"{where}: the stub's text shows hint code {span!r}"
            for line in block.code:
                code = " ".join(line.split("#")[0].split())
                assert len(code) < 20 or code not in text, f"{where}: the text shows {code!r}"


def test_the_hint_command_gives_one_step_at_a_time(capsys):
    """Three steps: a nudge, the idea, then the code (exercise 01's formula) at the last step
    only; a step past the last says which was the last and names no file (the handout has no
    solutions folder)."""
    hint = importlib.import_module("exercises.hint")
    formula = "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))"
    said = []
    for step in (1, 2, 3):
        assert hint.main(["1", "--step", str(step)]) == 0
        said.append(capsys.readouterr().out)
        assert f"hint {step} of 3" in said[-1], said[-1]
        assert ("--step " + str(step + 1) in said[-1]) == (step < 3), said[-1]
    assert hint.main(["1"]) == 0
    assert capsys.readouterr().out == said[0]                  # step 1 is the default
    assert all("mean(dxhat * xhat)" not in text for text in said[:2]), said[:2]
    assert formula in " ".join(said[2].split()), said[2]
    assert said[0] != said[1] != said[2]
    hint.main(["1", "layernorm_backward", "--step", "4"])
    last = capsys.readouterr().out
    assert "no hint 4; hint 3 was the last" in last, last
    assert "solutions" not in last and ".py" not in last, last
    with pytest.raises(SystemExit):
        hint.main(["5", "no_such_function"])
    assert "repeated_random_tokens, induction_stripe" in capsys.readouterr().err


def test_every_exercise_test_checks_a_function_the_student_writes():
    """The @pytest.mark.checks marks that choose what a notebook's check cell runs: every
    test has one, naming a function with a marked block, and every such function has a test."""
    from exercises.harness import checked_functions
    tools = make_stubs()
    for path in tools.solution_files():
        written = set(tools.blocks_by_function(path.read_text(), str(path)))
        tests = importlib.import_module(f"exercises.test_{path.name[2:]}".removesuffix(".py"))
        checked = {name: checked_functions(test) for name, test in vars(tests).items()
                   if name.startswith("test_") and callable(test)}
        unmarked = [name for name, functions in checked.items() if not functions]
        assert not unmarked, f"{tests.__name__}: {unmarked} carry no @pytest.mark.checks(...)"
        unknown = {f for functions in checked.values() for f in functions} - written
        assert not unknown, f"{tests.__name__} checks {unknown}: no function the student writes"
        untested = written - {f for functions in checked.values() for f in functions}
        assert not untested, f"{path.name}: no test checks {untested}"
