"""Hints, one step at a time: the first a nudge, the last close to the answer.

    python -m exercises.hint 1                    hint 1 of each function of exercise 01
    python -m exercises.hint 1 --step 2           the next step
    python -m exercises.hint 5 induction_stripe   only that function's

The hints live in the reference solutions, as the first comment lines of each marked block
("# Hint 1: ...", "# Hint 2: ...", see make_stubs.py). The stubs leave them out, so that no
hint shows above the code you write; the notebooks show them collapsed.
"""
import argparse
import sys
import textwrap

from exercises.make_stubs import blocks_by_function, solution_files


def solution_of(number):
    """exercises/solutions/exNN_*.py of exercise `number` (1 or "01"), or None."""
    wanted = f"ex{int(number):02d}_"
    return next((p for p in solution_files() if p.name.startswith(wanted)), None)


def hint_text(path, step=1, function=None):
    """Hint `step` of each marked block of the solution at `path` (of `function` only, if
    given), as lines to print."""
    lines = []
    for name, blocks in blocks_by_function(path.read_text(), str(path)).items():
        if function not in (None, name):
            continue
        for block in blocks:
            where = f"{name} ({block.what})" if len(blocks) > 1 else name
            if step > len(block.hints):
                lines.append(f"{where}: no hint {step}; hint {len(block.hints)} was the last")
                continue
            lines.append(f"{where}, hint {step} of {len(block.hints)}:")
            lines += textwrap.wrap(block.hints[step - 1], 88, initial_indent="    ",
                                   subsequent_indent="    ", break_on_hyphens=False)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m exercises.hint",
                                     description="Print an exercise's hints, one step at a time.")
    parser.add_argument("exercise", type=int, help="the exercise's number, e.g. 1")
    parser.add_argument("function", nargs="?", help="only this function's hints")
    parser.add_argument("--step", type=int, default=1, help="which step (1: a nudge)")
    args = parser.parse_args(argv)
    path = solution_of(args.exercise)
    if path is None:
        parser.error(f"no exercise {args.exercise}; the list is in exercises/README.md")
    functions = blocks_by_function(path.read_text(), str(path))
    if args.function is not None and args.function not in functions:
        parser.error(f"exercise {args.exercise:02d} has you write {', '.join(functions)}, "
                     f"not {args.function}")
    if args.step < 1:
        parser.error("--step counts from 1")
    print(f"exercise {args.exercise:02d}, {path.stem}")
    print("\n".join(hint_text(path, args.step, args.function)))
    if any(args.step < len(b.hints) for name, blocks in functions.items() for b in blocks
           if args.function in (None, name)):
        function = f" {args.function}" if args.function else ""
        print(f"next step: python -m exercises.hint {args.exercise}{function} "
              f"--step {args.step + 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
