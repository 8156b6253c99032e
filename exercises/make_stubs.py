"""Write the exercise stubs from the reference solutions (one source of truth).

    python -m exercises.make_stubs            write exercises/exNN_*.py
    python -m exercises.make_stubs --check    exit 1, naming the files, if a stub is stale

Each exercises/solutions/exNN_name.py marks the code a student writes:

        # BEGIN SOLUTION: what to write, in a few words
        ...the reference code...
        # END SOLUTION

and exercises/exNN_name.py is the same file with every marked block replaced, at the
block's indentation, by

        raise NotImplementedError("exercise NN: what to write, in a few words")

Everything outside the markers (the text at the top, the code given to the student, the
plot at the end) is copied as it is, so a stub and its solution cannot drift apart.

A block opens with its hints, in steps, a nudge first and the answer only a step further:

        # BEGIN SOLUTION: what to write, in a few words
        # Hint 1: a nudge; `code` in backticks
        #   and its next lines, "#" and three spaces
        # Hint 2: the formula
        ...the reference code...

The stub leaves them out with the block; python -m exercises.hint prints them one step at
a time, and the notebooks (make_notebooks.py) show them collapsed.
"""
import argparse
import ast
import dataclasses
import pathlib
import re
import sys
import textwrap

HERE = pathlib.Path(__file__).resolve().parent
SOLUTIONS = HERE / "solutions"
BEGIN = re.compile(r"^(?P<indent>[ ]*)# BEGIN SOLUTION(?::\s*(?P<what>.*\S))?\s*$")
END = re.compile(r"^[ ]*# END SOLUTION\s*$")
HINT = re.compile(r"^[ ]*# Hint (?P<step>\d+): (?P<text>.*\S)\s*$")
HINT_MORE = re.compile(r"^[ ]*#   (?P<text>\S.*?)\s*$")        # a hint goes on: "#" and 3 spaces


def solution_files():
    """The reference solutions, in exercise order."""
    return sorted(SOLUTIONS.glob("ex[0-9][0-9]_*.py"))


def raise_line(indent, message, width=96):
    """`raise NotImplementedError("message")` at `indent`, the message split over lines of
    adjacent string literals when it would pass `width` characters."""
    line = f"{indent}raise NotImplementedError({message!r})\n"
    if len(line) <= width + 1:
        return line
    pieces = textwrap.wrap(message, width - len(indent) - 8, drop_whitespace=False)
    inner = "".join(f"{indent}    {piece!r}\n" for piece in pieces)
    return f"{indent}raise NotImplementedError(\n{inner[:-1]})\n"


@dataclasses.dataclass
class Block:
    """One marked block of a solution: what the student writes in its place."""
    lineno: int                                  # of its BEGIN SOLUTION line
    indent: str
    what: str                                    # the stub's message, after "exercise NN: "
    hints: list = dataclasses.field(default_factory=list)   # step 1 (a nudge) first
    code: list = dataclasses.field(default_factory=list)    # the reference lines


def parse(text, name="solution"):
    """A solution's source -> its pieces in order: each a line outside the markers (str, its
    newline kept) or a Block. ValueError, naming the line, for a misplaced marker or hint."""
    pieces, block = [], None
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if block:
                raise ValueError(f"{name}:{lineno}: BEGIN SOLUTION inside the block opened "
                                 f"at line {block.lineno}")
            block = Block(lineno, begin["indent"], begin["what"] or "write this part")
        elif end:
            if not block:
                raise ValueError(f"{name}:{lineno}: END SOLUTION without a BEGIN")
            pieces.append(block)
            block = None
        elif block:
            add_to_block(block, line, f"{name}:{lineno}")
        else:
            pieces.append(line)
    if block:
        raise ValueError(f"{name}:{block.lineno}: BEGIN SOLUTION is never closed")
    return pieces


def add_to_block(block, line, where):
    """One line inside a block: a hint's first line, a hint's next line, or reference code."""
    hint, more = HINT.match(line), HINT_MORE.match(line)
    if hint and block.code:
        raise ValueError(f"{where}: a hint after the code: hints open the block")
    if hint:
        if int(hint["step"]) != len(block.hints) + 1:
            raise ValueError(f"{where}: Hint {hint['step']} should be Hint "
                             f"{len(block.hints) + 1}: number the steps 1, 2, ... in order")
        block.hints.append(hint["text"])
    elif more and block.hints and not block.code:
        block.hints[-1] += " " + more["text"]
    else:
        block.code.append(line)


def blocks(text, name="solution"):
    """The marked Blocks of a solution's source, in order."""
    return [piece for piece in parse(text, name) if isinstance(piece, Block)]


def blocks_by_function(text, name="solution"):
    """{top-level function name: its marked Blocks} of a solution's source, in order."""
    functions = [node for node in ast.parse(text, name).body
                 if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    found = {}
    for block in blocks(text, name):
        owner = [f.name for f in functions if f.lineno <= block.lineno <= f.end_lineno]
        if not owner:
            raise ValueError(f"{name}:{block.lineno}: a marked block outside any function")
        found.setdefault(owner[0], []).append(block)
    return found


def render(pieces, number=None):
    """Source text from parse()'s pieces: each Block as the stub's raise line of exercise
    `number`, or, with number None, as its reference code (markers and hints left out)."""
    return "".join(piece if isinstance(piece, str)
                   else "".join(piece.code) if number is None
                   else raise_line(piece.indent, f"exercise {number}: {piece.what}")
                   for piece in pieces)


def make_stub(text, number, name="solution"):
    """The stub of one solution's source text. number: "01".. for the error messages."""
    pieces = parse(text, name)
    if not any(isinstance(piece, Block) for piece in pieces):
        raise ValueError(f"{name}: no BEGIN SOLUTION marker: nothing for the student to write")
    return render(pieces, number)


def stubs():
    """{stub path: its text}, generated from every solution."""
    generated = {}
    for path in solution_files():
        number = path.name[2:4]
        generated[HERE / path.name] = make_stub(path.read_text(), number, str(path))
    return generated


def write_stubs(directory=HERE):
    """Write every stub into `directory` (exercises/ by default) -> the paths written."""
    directory = pathlib.Path(directory)
    written = []
    for path, text in stubs().items():
        target = directory / path.name
        target.write_text(text)
        written.append(target)
    return written


def stale_stubs():
    """The committed stubs that differ from freshly generated ones (or are missing)."""
    return [path for path, text in stubs().items()
            if not path.exists() or path.read_text() != text]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m exercises.make_stubs",
                                     description="Write exercises/exNN_*.py from the solutions.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a committed stub differs from its solution")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_stubs()
        for path in stale:
            print(f"{path.relative_to(HERE.parent)}: differs from the stub generated from "
                  f"solutions/{path.name}; run python -m exercises.make_stubs", file=sys.stderr)
        return 1 if stale else 0
    for path in write_stubs():
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
