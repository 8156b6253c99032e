"""Build the students' handout: one zip with what a student needs and none of the answers.

    python -m exercises.make_handout              write dist/handout.zip (make handout)
    python -m exercises.make_handout --out PATH   write it to PATH instead

Unzipped, it is a folder a student installs with `pip install -e ".[lab]"` (the `lab`
extra: pytest, hypothesis, ipykernel, with NumPy and matplotlib from the package itself)
and works in:

    README.md, Makefile    the students' own: install, `make exercise N=..`, the hints
    pyproject.toml         the repository's (its `lab` extra is the students' install)
    minitransformer/       the engine and `circuits/`: the checks compare with them
    circuits/
    exercises/             the stubs (generated afresh from the solutions), the checks
                           (test_NN_*.py), harness.py, common.py, hint.py, make_stubs.py, the
                           README with the list of exercises and their times
    exercises/notebooks/   the students' notebooks (make_notebooks.py), one per exercise
    exercises/hints/       each exercise's marked blocks with their hints and, in place of
                           the reference code, the stub's `raise NotImplementedError`: what
                           `python -m exercises.hint N` reads in the handout (make_stubs.py
                           is shipped with SOLUTIONS pointing there)

Not in it: exercises/solutions/ and the solution notebooks, this script and
make_notebooks.py, tests/ (the teachers' tests, among them the typical-mistake ones),
experiments/, and anything built (exercises/_output/, caches). The stubs are generated from
the solutions, not copied, so a teacher's filled-in exercises/exNN_*.py never goes out.
tests/test_handout.py builds it, looks inside, and runs a check from the unzipped folder.
"""
import argparse
import io
import pathlib
import sys
import time
import zipfile

import nbformat

from exercises import make_notebooks
from exercises.make_stubs import BEGIN, END, HERE, HINT, HINT_MORE, blocks, make_stub, raise_line
from exercises.make_stubs import solution_files

ROOT = HERE.parent
OUT = ROOT / "dist" / "handout.zip"
ENGINE = ("minitransformer", "circuits")          # the packages the checks import
SHIPPED = ("__init__.py", "README.md", "common.py", "harness.py", "hint.py", "make_stubs.py")
HINTS = "hints"                                   # exercises/hints/ in the handout
SOLUTIONS_LINE = 'SOLUTIONS = HERE / "solutions"\n'
HANDOUT_SOLUTIONS_LINE = (f'SOLUTIONS = HERE / "{HINTS}"   # the handout: each solution\'s marked '
                          f'blocks, hints only (make_handout.py)\n')
ZIP_TIME = (2020, 1, 1, 0, 0, 0)                  # fixed, so that a build is byte-identical

README = """\
# Induction heads from scratch: the exercises

Your copy of the course on "In-context Learning and Induction Heads" (Olsson et al. 2022):
a small transformer written in NumPy (`minitransformer/`, `circuits/`), which the checks
compare your code with, and the exercises in `exercises/` (the list, what each teaches and
how long it takes: `exercises/README.md`).

Install once, from this folder (Python 3.10 or later):

```sh
pip install -e ".[lab]"      # NumPy, matplotlib, pytest, hypothesis, ipykernel (or: make install)
```

**In a notebook**: open `exercises/notebooks/exNN_*.ipynb` (Jupyter: `pip install jupyterlab`,
then `jupyter lab exercises/notebooks`; VS Code: open this folder and pick the Python you
installed into as the kernel). Run the cells from the top; where a cell says
`raise NotImplementedError(...)`, write the function there, run the cell, then the check
cell below it. The hints sit above each function, collapsed: open "Hint 1" first.

**With the `.py` files**: edit `exercises/exNN_*.py` where it says
`raise NotImplementedError(...)`, then

```sh
make exercise N=1                             # check exercises/ex01_layernorm_backward.py
python -m exercises.hint 1                    # hint 1 for each function; --step 2: the next
python -m exercises.ex01_layernorm_backward   # run it: the printout or plot at its end
```

Plots and the trained model the later exercises look at go to `exercises/_output/`.
"""

MAKEFILE = """\
# The students' Makefile (written by exercises/make_handout.py).
#   make install          pip install -e ".[lab]": NumPy, matplotlib, pytest, hypothesis, ipykernel
#   make exercise N=4     check your exercises/ex04_*.py (or: make exercise 4)
PYTHON ?= python3

.PHONY: install exercise
ifeq (exercise,$(firstword $(MAKECMDGOALS)))
N ?= $(word 2,$(MAKECMDGOALS))
$(if $(N),$(eval $(N):;@:))
endif

install:
\t$(PYTHON) -m pip install -q -e ".[lab]"

exercise:
\t@$(PYTHON) -c "import numpy, matplotlib, pytest, hypothesis" 2>/dev/null || $(MAKE) install
\t@test -n "$(N)" || { echo "usage: make exercise N=4   (checks exercises/ex04_*.py)"; exit 2; }
\t@test="$$(ls exercises/test_$$(printf %02d $$(expr $(N) + 0))_*.py 2>/dev/null)"; \\
\ttest -n "$$test" || { echo "no exercise $(N); the list is in exercises/README.md"; exit 2; }; \\
\tOPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} $(PYTHON) -m pytest -q --tb=short \\
\t\t-p no:cacheprovider $$test
"""


def hints_only(text, number, name="solution"):
    """A solution's source with each marked block's reference code replaced by the stub's
    raise line, its markers and hint lines kept as they are: the stub, plus what
    `python -m exercises.hint` reads. ValueError if that is not what came out."""
    out, block = [], None
    for line in text.splitlines(keepends=True):
        if block is None:
            begin = BEGIN.match(line)
            if begin:
                block = {"indent": begin["indent"], "what": begin["what"] or "write this part",
                         "hints": False, "raised": False}
            out.append(line)
            continue
        if END.match(line):
            if not block["raised"]:
                out.append(raise_line(block["indent"], f"exercise {number}: {block['what']}"))
            out.append(line)
            block = None
        elif not block["raised"] and (HINT.match(line) or block["hints"] and HINT_MORE.match(line)):
            block["hints"] = True
            out.append(line)
        elif not block["raised"]:                     # the reference code starts: left out
            out.append(raise_line(block["indent"], f"exercise {number}: {block['what']}"))
            block["raised"] = True
    result = "".join(out)
    same_stub = make_stub(result, number, name) == make_stub(text, number, name)
    same_hints = [b.hints for b in blocks(result, name)] == [b.hints for b in blocks(text, name)]
    only_raise = all("".join(b.code).lstrip().startswith("raise NotImplementedError(")
                     for b in blocks(result, name))
    if not (same_stub and same_hints and only_raise):
        raise ValueError(f"{name}: its hints-only copy is not the stub with the same hints")
    return result


def handout_files():
    """{path in the zip: bytes}: everything the handout holds."""
    files = {"README.md": README.encode(), "Makefile": MAKEFILE.encode(),
             "pyproject.toml": (ROOT / "pyproject.toml").read_bytes()}
    for package in ENGINE:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    for name in SHIPPED:
        files[f"exercises/{name}"] = (HERE / name).read_bytes()
    make_stubs = files["exercises/make_stubs.py"].decode()
    if make_stubs.count(SOLUTIONS_LINE) != 1:
        raise ValueError(f"exercises/make_stubs.py: no line {SOLUTIONS_LINE.strip()!r} to "
                         f"point at the handout's hints")
    files["exercises/make_stubs.py"] = make_stubs.replace(
        SOLUTIONS_LINE, HANDOUT_SOLUTIONS_LINE).encode()
    for path in sorted(HERE.glob("test_[0-9][0-9]_*.py")):
        files[f"exercises/{path.name}"] = path.read_bytes()
    for path in solution_files():
        number, text = path.name[2:4], path.read_text()
        files[f"exercises/{path.name}"] = make_stub(text, number, str(path)).encode()
        files[f"exercises/{HINTS}/{path.name}"] = hints_only(text, number, str(path)).encode()
        notebook = make_notebooks.notebook(path, stub=True)
        files[f"exercises/notebooks/{path.stem}.ipynb"] = nbformat.writes(notebook).encode()
    return files


def write_handout(out=OUT):
    """Write the handout zip to `out` -> {path in the zip: bytes} (what it holds)."""
    files = handout_files()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name])
    out.write_bytes(buffer.getvalue())
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m exercises.make_handout",
                                     description="Write the students' handout zip: notebooks, "
                                                 "stubs, checks, hints; no solutions.")
    parser.add_argument("--out", type=pathlib.Path, default=OUT,
                        help="the zip to write (default dist/handout.zip)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    files = write_handout(args.out)
    notebooks = sum(name.endswith(".ipynb") for name in files)
    print(f"wrote {args.out}: {len(files)} files, {args.out.stat().st_size / 1e6:.2f} MB "
          f"({notebooks} students' notebooks; no solutions), "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
