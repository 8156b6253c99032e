"""Write each exercise as two Jupyter notebooks, generated from its solution (one source).

    python -m exercises.make_notebooks     write exercises/notebooks/exNN_name.ipynb (the
                                           students') and exercises/solutions/notebooks/
                                           exNN_name.ipynb (the solution notebooks: yours)
        --out DIR                          the students' notebooks to DIR instead
        --solutions-out DIR                the solution notebooks to DIR instead

The solution notebooks sit with the reference solutions, away from the folder students are
pointed at (an exercises/notebooks/solutions/ left by an earlier build is removed); make
handout (exercises/make_handout.py) zips the students' notebooks and none of the solutions.

The cells follow exercises/solutions/exNN_name.py, top to bottom:

    markdown   the module docstring, less its "Run: ... Check: ..." paragraph (for the .py)
    code       setup: finds the repository, makes check() for this exercise
    code       the imports and constants, then each top-level function in a cell of its own
    markdown   before each function the student writes: what to write, and its hints, one
               collapsed <details> per step
    code       after it, check("function") (tagged "check"): the tests of make exercise
               N=NN that check that function (exercises/harness.py, notebook_check)
    code       the __main__ block, dedented: the printout or plot (tagged "demo")

In the students' notebook each marked block is the stub's NotImplementedError, as in
exercises/exNN_name.py; in the solution notebook it is the reference code, without the
markers and hint comments. The notebooks are built, not committed (exercises/.gitignore):
run this, or make notebooks, after changing a solution.
"""
import argparse
import ast
import os
import pathlib
import re
import sys
import textwrap

import nbformat

from exercises.make_stubs import HERE, Block, parse, render, solution_files
from minitransformer.io import atomic_write_text, error, os_error

OUT = HERE / "notebooks"                           # the students' notebooks
SOLUTIONS_OUT = HERE / "solutions" / "notebooks"   # the solution notebooks (git-ignored)
LABELS = re.compile(r"^(Paper|What to compute|What to build|Shapes)\b")

SETUP = '''\
# Setup: the checks import exercises/ and minitransformer/ from this repository
import pathlib
import sys

here = pathlib.Path.cwd().resolve()
root = next((p for p in (here, *here.parents) if (p / "exercises/harness.py").is_file()), None)
if root is None:
    raise RuntimeError("open this notebook inside the repository (exercises/notebooks/): "
                       "its checks need exercises/ and minitransformer/ from there")
if str(root) not in sys.path:
    sys.path.insert(0, str(root))
from exercises.harness import notebook_check

check = notebook_check("{exercise}", globals())'''


def top_level(text):
    """A solution's source -> [(kind, source)] in order. kind: "docstring", "code"
    (consecutive imports and constants together), "function" (a def or class with the
    comments above it), "main" (the body of `if __name__ == "__main__":`, dedented)."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    starts = [first_line(node, lines) for node in tree.body] + [len(lines)]
    spans = []                                       # [kind, node, first line, end]
    for node, start, end in zip(tree.body, starts, starts[1:]):
        if node is tree.body[0] and ast.get_docstring(tree) is not None:
            kind = "docstring"
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            kind = "function"
        else:
            kind = "main" if is_main(node) else "code"
        if kind == "code" and spans and spans[-1][0] == "code":
            spans[-1][3] = end
        else:
            spans.append([kind, node, start, end])
    pieces = []
    for kind, node, start, end in spans:
        if kind == "docstring":
            source = ast.get_docstring(tree)
        elif kind == "main":
            source = textwrap.dedent("".join(lines[node.body[0].lineno - 1:node.end_lineno]))
        else:
            source = "".join(lines[start:end]).strip("\n") + "\n"
        pieces.append((kind, source))
    return pieces


def first_line(node, lines):
    """The 0-based first line of a top-level statement: its decorators and the comment
    lines right above it included."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return start


def is_main(node):
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and ast.unparse(node.test) in ('__name__ == "__main__"', "__name__ == '__main__'"))


def intro_markdown(docstring):
    """The module docstring as markdown: its first line the title, the paragraph that tells
    how to run and check the .py file left out."""
    title, _, rest = docstring.partition("\n")
    paragraphs = [LABELS.sub(r"**\1**", p) for p in rest.strip().split("\n\n")
                  if not p.startswith("Run:")]
    return "\n\n".join([f"# {title}"] + paragraphs)


def exercise_markdown(name, blocks, stub):
    """What to write in function `name` (its marked blocks), then each block's hints, one
    collapsed <details> per step."""
    lines = [f"### Your turn: `{name}`", ""]
    whats = [block.what for block in blocks]
    if len(blocks) == 1:
        lines += [f"Write where it says `raise NotImplementedError`: {whats[0]}."]
    else:
        lines += [f"Write where it says `raise NotImplementedError`, in {len(blocks)} places:",
                  ""] + [f"{part}. {what}" for part, what in enumerate(whats, 1)]
    lines += ["", "Then run the cell, and the check cell below it." if stub else
              "(This is the solution notebook: the cell below holds the reference code.)"]
    for part, block in enumerate(blocks, 1):
        for step, hint in enumerate(block.hints, 1):
            label = f"Hint {step}" + (f" for part {part}" if len(blocks) > 1 else "")
            lines += ["", "<details>", f"<summary>{label}</summary>", "", hint, "", "</details>"]
    return "\n".join(lines)


def notebook(path, stub):
    """The notebook of one solution file: the students' (stub=True) or the solution."""
    exercise, number = path.stem, path.name[2:4]
    cells = [cell for kind, source in top_level(path.read_text())
             for cell in cells_of(kind, source, exercise, number if stub else None)]
    for i, cell in enumerate(cells):
        cell.id = f"ex{number}-{i:02d}"                    # the same on every build
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})


def cells_of(kind, source, exercise, number):
    """The cells of one of top_level()'s pieces; number ("01") in the students' notebook,
    where marked blocks become stubs, None in the solution notebook."""
    markdown, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    if kind == "docstring":
        return [markdown(intro_markdown(source)), code(SETUP.format(exercise=exercise))]
    pieces = parse(source, exercise)
    text = render(pieces, number).rstrip("\n")
    if kind == "main":
        return [markdown(f"## Run it\n\nThe printout or plot of `python -m exercises."
                         f"{exercise}`; plots are also written to exercises/_output/."),
                code(text, metadata={"tags": ["demo"]})]
    marked = [piece for piece in pieces if isinstance(piece, Block)]
    if not marked:
        return [code(text)]
    name = source_name(source)
    return [markdown(exercise_markdown(name, marked, stub=number is not None)), code(text),
            code(f'check("{name}")', metadata={"tags": ["check"]})]


def source_name(source):
    """The name of the function (or class) defined in a top-level piece of source."""
    return next(node.name for node in ast.parse(source).body
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)))


def write_notebooks(out=OUT, solutions_out=SOLUTIONS_OUT):
    """Write every exercise's students' notebook to the folder `out` and its solution
    notebook to `solutions_out` (None: none) -> the paths written."""
    written = []
    folders = [(out, True)] + ([(solutions_out, False)] if solutions_out is not None else [])
    stale = out / "solutions"          # where earlier builds put the solution notebooks
    if stale.is_dir() and solutions_out is not None and stale.resolve() != solutions_out.resolve():
        for path in stale.glob("ex[0-9][0-9]_*.ipynb"):
            path.unlink()
        if not any(stale.iterdir()):
            stale.rmdir()
    for path in solution_files():
        for folder, stub in folders:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{path.stem}.ipynb"
            text = nbformat.writes(notebook(path, stub))
            try:
                atomic_write_text(target, text if text.endswith("\n") else text + "\n")
            except OSError as e:    # a full disk names no file: this one
                raise ValueError(f"{target}: cannot write ({e.strerror or e})") from None
            written.append(target)
    return written


def writable_folder(path, flag):
    """A one-line ValueError naming `flag` unless `path` is a folder that can be written, or
    can be made in one (checked before anything is written)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write there ({existing} is not a writable folder)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m exercises.make_notebooks",
                                     description="Write the exercise notebooks from the solutions.")
    parser.add_argument("--out", type=pathlib.Path, default=OUT,
                        help="the students' notebooks' folder (default exercises/notebooks)")
    parser.add_argument("--solutions-out", type=pathlib.Path, default=SOLUTIONS_OUT,
                        help="the solution notebooks' folder (default "
                             "exercises/solutions/notebooks)")
    args = parser.parse_args(argv)
    try:
        writable_folder(args.out, "--out")
        writable_folder(args.solutions_out, "--solutions-out")
        written = write_notebooks(args.out, args.solutions_out)
    except ValueError as e:
        return error(e)
    except OSError as e:            # a full disk; a folder made read-only since the check
        return os_error(e, args.out)
    print(f"wrote {len(written) // 2} students' notebooks to {args.out}/ and the solution "
          f"notebooks to {args.solutions_out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
