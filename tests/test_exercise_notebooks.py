"""The exercise notebooks (exercises/make_notebooks.py) are the exercises: generated afresh,
every solution notebook runs clean in a Jupyter kernel (nbclient, headless), and in every
students' notebook each check cell fails with that exercise's NotImplementedError (a check
that fails otherwise, or passes, on a stub says nothing about the student's code).

The kernels run with EXERCISE_FAST=1, as tests/test_exercises.py's checks do, two at a
time: 66-117 s in all, measured on a busy 2-core machine. The "Run it" (demo) cells run
only where they need no trained model (DEMOS); the others train or load the tiny-induction
model, a minute or two each, and are the same code as the .py files' __main__ blocks."""
import ast
import asyncio
import pathlib
import re

import pytest

MISSING = "{} is not installed (pip install -e .[dev]): the notebooks are not run"
nbformat = pytest.importorskip("nbformat", reason=MISSING.format("nbformat"))
nbclient = pytest.importorskip("nbclient", reason=MISSING.format("nbclient"))
pytest.importorskip("ipykernel", reason=MISSING.format("ipykernel"))

from exercises import make_notebooks, make_stubs  # noqa: E402 (after the skips)

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
NAMES = [path.stem for path in make_stubs.solution_files()]
DEMOS = {"ex01_layernorm_backward", "ex02_attention_backward", "ex11_handmade_induction"}
PARALLEL = 2                                       # kernels at a time
CELL_TIMEOUT = 600                                 # s; exercise 13's check trains for ~15 s


def kernel_missing():
    from jupyter_client.kernelspec import KernelSpecManager
    return "python3" not in KernelSpecManager().find_kernel_specs()


def tagged(cell, tag):
    return tag in cell.metadata.get("tags", [])


def errors(cell):
    return [out for out in cell.get("outputs", []) if out.output_type == "error"]


async def execute(jobs):
    """Run each (notebook, allow_errors) in a kernel of its own, PARALLEL at a time, from
    exercises/ -> for each, None or the CellExecutionError that stopped it."""
    gate = asyncio.Semaphore(PARALLEL)

    async def one(notebook, allow_errors):
        async with gate:
            client = nbclient.NotebookClient(
                notebook, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=allow_errors,
                resources={"metadata": {"path": str(EXERCISES)}})
            try:
                await client.async_execute()
            except nbclient.exceptions.CellExecutionError as error:
                return error
            return None
    return await asyncio.gather(*(one(notebook, allow) for notebook, allow in jobs))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """{(name, "solution" | "stub"): (executed notebook, error or None)}, every notebook
    generated into a temporary folder and run once."""
    if kernel_missing():
        pytest.skip("no Jupyter kernel named python3 (pip install ipykernel)")
    out = tmp_path_factory.mktemp("notebooks")
    make_notebooks.write_notebooks(out, solutions_out=out / "solutions")
    jobs, keys = [], []
    for name in NAMES:
        for kind, path in (("solution", out / "solutions" / f"{name}.ipynb"),
                           ("stub", out / f"{name}.ipynb")):
            notebook = nbformat.read(path, as_version=4)
            keep_demo = kind == "solution" and name in DEMOS
            notebook.cells = [c for c in notebook.cells if keep_demo or not tagged(c, "demo")]
            jobs.append((notebook, kind == "stub"))
            keys.append((name, kind))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EXERCISE_FAST", "1")
        env.setenv("OPENBLAS_NUM_THREADS", "1")
        env.delenv("EXERCISE_SOURCE", raising=False)
        results = asyncio.run(execute(jobs))
    return {key: (notebook, error) for key, (notebook, _), error in zip(keys, jobs, results)}


@pytest.mark.parametrize("name", NAMES)
def test_the_solution_notebook_runs_clean(executed, name):
    notebook, error = executed[name, "solution"]
    assert error is None, f"{name}'s solution notebook stops with an error:\n{error}"
    checks = [cell for cell in notebook.cells if tagged(cell, "check")]
    assert checks, f"{name}: no check cell"
    for cell in checks:
        text = "".join(out.get("text", "") for out in cell.outputs)
        assert re.search(r": (all \d+ checks pass|its one check passes)", text), \
            f"{name}, {cell.source}: {text}"


@pytest.mark.parametrize("name", NAMES)
def test_every_check_of_a_students_notebook_fails_with_not_implemented(executed, name):
    notebook, _ = executed[name, "stub"]
    number = name[2:4]
    for cell in notebook.cells:
        if tagged(cell, "check"):
            found = [(out.ename, out.evalue) for out in errors(cell)]
            assert found and found[0][0] == "NotImplementedError" and \
                found[0][1].startswith(f"exercise {number}:"), \
                (f"{name}, {cell.source}: should fail with the stub's NotImplementedError "
                 f"('exercise {number}: ...'), got {found or 'no error'}")
        else:
            assert not errors(cell), f"{name}: a cell that is no check fails:\n{cell.source}"


@pytest.mark.parametrize("name", NAMES)
def test_the_notebooks_hold_the_stub_and_the_solution(name, tmp_path):
    """The code cells (less setup, checks and demo) are the .py files' code, statement for
    statement; a check follows each function the student writes; every hint is collapsed."""
    solution = EXERCISES / "solutions" / f"{name}.py"
    functions = make_stubs.blocks_by_function(solution.read_text())
    for stub, source in ((True, (EXERCISES / f"{name}.py").read_text()),
                         (False, solution.read_text())):
        notebook = make_notebooks.notebook(solution, stub)
        code = [c for c in notebook.cells if c.cell_type == "code"][1:]   # after the setup
        body = "\n".join(c.source for c in code
                         if not tagged(c, "check") and not tagged(c, "demo"))
        module = ast.parse(source)
        expected = [node for node in module.body[1:] if not make_notebooks.is_main(node)]
        assert ast.dump(ast.parse(body)) == ast.dump(ast.Module(expected, [])), \
            f"{name}: the notebook's code is not the {'stub' if stub else 'solution'}'s"
        checks = [code[i - 1].source for i, c in enumerate(code) if tagged(c, "check")]
        assert [make_notebooks.source_name(s) for s in checks] == list(functions)
        markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
        hints = [hint for blocks in functions.values() for block in blocks
                 for hint in block.hints]
        outside = re.sub(r"<details>.*?</details>", "", markdown, flags=re.S)
        assert all(hint in markdown and hint not in outside for hint in hints)
