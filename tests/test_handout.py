"""The students' handout (make handout: exercises/make_handout.py) holds what a student needs
and none of the answers, works unzipped as it is, and the Colab recipe in exercises/README.md
works on it as written.

Built once into a temporary folder (~0.5 s). Unzipped, with nothing installed: exercise 1's
check fails on the stub with its NotImplementedError and passes once the stub is replaced by
the solution (`make exercise N=1`, the students' Makefile); `python -m exercises.hint` gives
the repository's hints. The Colab recipe's lines run in a fresh virtual environment
(--system-site-packages, so nothing is downloaded; pip still resolves the `lab` extra against
what is installed), /content a temporary folder; the pip line gets --no-build-isolation (the
build backend from this environment, no download). Then a students' notebook's cells run
there up to its first check, which fails with the stub's NotImplementedError. 16-30 s
measured on a busy 2-core machine (load 3-4)."""
import ast
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e .[dev]): "
                                       "make handout builds the notebooks with it")

from exercises import make_handout, make_stubs  # noqa: E402 (after the skip)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "exercises" / "solutions"
NAMES = [path.stem for path in make_stubs.solution_files()]
LOCAL = {"exercises", "minitransformer", "circuits"}
TIMEOUT = 300


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    """(the zip's path, {name in the zip: bytes})"""
    out = tmp_path_factory.mktemp("dist") / "handout.zip"
    make_handout.write_handout(out)
    with zipfile.ZipFile(out) as archive:
        return out, {name: archive.read(name) for name in archive.namelist()}


def unzipped(handout, folder):
    """The handout unzipped into `folder` -> folder."""
    with zipfile.ZipFile(handout[0]) as archive:
        archive.extractall(folder)
    return folder


def run(command, cwd, **env):
    """Run `command` (a list) in `cwd`, a clean environment plus `env` -> CompletedProcess."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "EXERCISE_SOURCE", "EXERCISE_FAST")}
    environment.update(OPENBLAS_NUM_THREADS="1", **env)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=TIMEOUT)


# ---- what is in it ---------------------------------------------------------------------------

def test_the_handout_holds_what_a_student_needs(handout):
    _, files = handout
    needed = {"README.md", "Makefile", "pyproject.toml", "minitransformer/__init__.py",
              "circuits/__init__.py", "circuits/patching.py", "exercises/__init__.py",
              "exercises/README.md", "exercises/common.py", "exercises/harness.py",
              "exercises/hint.py", "exercises/make_stubs.py"}
    for name in NAMES:
        number = name[2:4]
        test = next(p.name for p in (ROOT / "exercises").glob(f"test_{number}_*.py"))
        needed |= {f"exercises/{name}.py", f"exercises/{test}", f"exercises/hints/{name}.py",
                   f"exercises/notebooks/{name}.ipynb"}
    assert needed <= set(files), f"missing from the handout: {sorted(needed - set(files))}"
    engine = {p.relative_to(ROOT).as_posix() for package in ("minitransformer", "circuits")
              for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert engine <= set(files), f"engine files missing: {sorted(engine - set(files))}"
    for name in NAMES:                 # the stubs generated afresh, not a filled-in copy
        solution = (SOLUTIONS / f"{name}.py").read_text()
        assert files[f"exercises/{name}.py"].decode() == make_stubs.make_stub(solution, name[2:4])


def test_the_handout_holds_no_solution(handout):
    _, files = handout
    teachers = [name for name in files
                if "solutions" in name.split("/") or name.startswith(("tests/", "experiments/"))
                or "solution" in pathlib.PurePosixPath(name).name
                or name.endswith(("make_notebooks.py", "make_handout.py"))
                or "_output" in name or "__pycache__" in name or "/." in "/" + name]
    assert not teachers, f"teachers' or built files in the handout: {teachers}"
    explains = {"exercises/make_stubs.py", "exercises/README.md"}   # what the markers are
    markers = [name for name, data in files.items()
               if re.search(rb"(BEGIN|END) SOLUTION", data)
               and not name.startswith("exercises/hints/") and name not in explains]
    assert not markers, f"solution markers outside exercises/hints/: {markers}"
    for name in NAMES:                 # a hints file: each block's hints, the stub's raise
        text = files[f"exercises/hints/{name}.py"].decode()
        solution = (SOLUTIONS / f"{name}.py").read_text()
        found, expected = make_stubs.blocks(text), make_stubs.blocks(solution)
        assert [b.hints for b in found] == [b.hints for b in expected], name
        assert all("".join(b.code).strip().startswith("raise NotImplementedError(")
                   for b in found), f"exercises/hints/{name}.py holds more than the stub's raise"
    notebooks = [name for name, data in files.items() if name.endswith(".ipynb")]
    assert len(notebooks) == len(NAMES)
    for name in notebooks:
        text = json.dumps(json.loads(files[name]))
        assert "This is the solution notebook" not in text and "NotImplementedError" in text, name
    # no reference block, whole, anywhere in exercises/ (the engine is the field's own code,
    # which the checks compare with: circuits.patching has a logit difference, for one)
    shipped = {name: squeezed(cell_text(name, data)) for name, data in files.items()
               if name.startswith("exercises/")}
    for path in make_stubs.solution_files():
        for block in make_stubs.blocks(path.read_text()):
            code = squeezed("".join(line for line in block.code
                                    if not line.strip().startswith("#")))
            shown = [name for name, text in shipped.items() if code and code in text]
            assert not shown, f"{path.name}:{block.lineno}'s reference code is in {shown}"


def cell_text(name, data, code_only=False):
    """A file's text; a notebook's: its cells' (its code cells' only, with code_only)."""
    if not name.endswith(".ipynb"):
        return data.decode()
    return "\n".join(cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
                     for cell in json.loads(data)["cells"]
                     if cell["cell_type"] == "code" or not code_only)


def squeezed(text):
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def test_the_lab_extra_is_the_students_install(handout):
    """Small (no dask, selenium, torch, nbclient), and with the base dependencies it covers
    every package the handout's exercises/ imports, hypothesis (exercise 3) included."""
    _, files = handout
    project = tomllib.loads(files["pyproject.toml"].decode())["project"]
    lab = {distribution(r) for r in project["optional-dependencies"]["lab"]}
    assert {"pytest", "hypothesis", "ipykernel"} <= lab
    assert not lab & {"dask", "selenium", "torch", "nbclient", "nbformat", "cupy-cuda12x"}
    provided = lab | {distribution(r) for r in project["dependencies"]}
    imported = set()
    for name, data in files.items():
        if name.startswith("exercises/") and name.endswith((".py", ".ipynb")):
            for node in ast.walk(ast.parse(cell_text(name, data, code_only=True))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - LOCAL
    assert third_party <= provided, f"imported, not installed by [lab]: {third_party - provided}"


def distribution(requirement):
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


# ---- it works unzipped -----------------------------------------------------------------------

def test_a_check_runs_from_the_unzipped_handout(handout, tmp_path):
    """make exercise N=1 fails on the stub with its NotImplementedError, passes on the
    solution; nothing installed, the checks import the handout's own packages."""
    if shutil.which("make") is None:
        pytest.skip("no make here: the students' Makefile is not run")
    folder = unzipped(handout, tmp_path / "course")
    where = run([sys.executable, "-c", "import exercises.harness, minitransformer, circuits as c; "
                 "print(exercises.harness.__file__, minitransformer.__file__, c.__file__)"],
                folder)
    assert where.returncode == 0 and all(pathlib.Path(p).is_relative_to(folder)
                                         for p in where.stdout.split()), where.stdout + where.stderr
    stub = run(["make", "-s", "exercise", "N=1", f"PYTHON={sys.executable}"], folder)
    assert stub.returncode != 0 and "NotImplementedError: exercise 01:" in stub.stdout, \
        stub.stdout[-3000:] + stub.stderr[-2000:]
    name = "ex01_layernorm_backward.py"
    (folder / "exercises" / name).write_text((SOLUTIONS / name).read_text())
    solved = run(["make", "-s", "exercise", "N=1", f"PYTHON={sys.executable}"], folder)
    assert solved.returncode == 0 and " passed" in solved.stdout \
        and "failed" not in solved.stdout, solved.stdout[-3000:] + solved.stderr[-2000:]


def test_the_hint_command_works_in_the_handout(handout, tmp_path):
    """python -m exercises.hint reads exercises/hints/ there and says what it says here."""
    folder = unzipped(handout, tmp_path / "course")
    for args in (["1"], ["1", "--step", "2"], ["14", "--step", "3"], ["15", "corrupt"]):
        there = run([sys.executable, "-m", "exercises.hint", *args], folder)
        here = run([sys.executable, "-m", "exercises.hint", *args], ROOT)
        assert there.returncode == 0 and there.stdout == here.stdout, (args, there.stdout,
                                                                        there.stderr)
    assert "hint 1 of" in run([sys.executable, "-m", "exercises.hint", "1"], folder).stdout


def colab_lines():
    """The Colab cell of exercises/README.md, line by line, as given there."""
    text = (ROOT / "exercises" / "README.md").read_text()
    found = re.search(r"```\w*\n\s*(!unzip .*?)\n\s*```", text, re.S)
    assert found, "exercises/README.md: no Colab cell (a fenced block starting !unzip)"
    return [line.strip() for line in found.group(1).splitlines() if line.strip()]


def test_the_colab_recipe_works_as_written(handout, tmp_path):
    content = tmp_path / "content"                   # Colab's /content, where uploads land
    content.mkdir()
    (content / "handout.zip").write_bytes(handout[0].read_bytes())
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    cwd = content
    for line in colab_lines():
        line = line.replace("/content", str(content))
        if line.startswith("%cd "):
            cwd = pathlib.Path(line[4:].strip())
            assert cwd.is_dir(), f"the recipe's %cd: no folder {cwd}"
            continue
        assert line.startswith("!"), f"a line of the Colab cell that is no shell command: {line}"
        command = shlex.split(line[1:])
        if command[0] == "pip":
            command = [str(python), "-m", "pip", *command[1:], "--no-build-isolation"]
        done = run(command, cwd)
        assert done.returncode == 0, f"{line}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    # a students' notebook there: its cells up to the first check, in the recipe's Python
    notebook = json.loads((cwd / "ex01_layernorm_backward.ipynb").read_text())
    code = [cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            for cell in notebook["cells"] if cell["cell_type"] == "code"]
    first_check = next(i for i, source in enumerate(code) if source.startswith("check("))
    cells = run([str(python), "-c", "\n\n".join(code[:first_check + 1])], cwd)
    assert "NotImplementedError: exercise 01:" in cells.stderr, cells.stdout + cells.stderr
    installed = run([str(python), "-c", "import minitransformer; print(minitransformer.__file__)"],
                    tmp_path)
    assert installed.returncode == 0 and pathlib.Path(installed.stdout.strip()).is_relative_to(
        content / "course"), installed.stdout + installed.stderr
