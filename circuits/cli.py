"""What the circuits command lines (heads.py, eigen.py) share: the run argument and the choice
of snapshots, one row per head from circuits.scores, the fixed-width table, and figures."""
import argparse
import math
from collections import namedtuple

from minitransformer.backend import add_device_argument
from minitransformer.io import atomic_write

from .scores import HeadScores


def run_parser(prog, doc, all_steps_help="every snapshot", formats=("json",), plot_help=None):
    """An ArgumentParser with `run`, the mutually exclusive --step / --all-steps, the output
    formats (--json, --csv: mutually exclusive), with plot_help --plot OUT.png, and --device
    (open the run with Run(args.run, args.device))."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("run", help="a run's run.npz or its directory")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="a snapshot step (default: the latest weights)")
    which.add_argument("--all-steps", action="store_true", help=all_steps_help)
    form = parser.add_mutually_exclusive_group()
    for name in formats:
        form.add_argument(f"--{name}", action="store_true", help=f"{name.upper()} instead of a table")
    if plot_help:
        parser.add_argument("--plot", metavar="OUT.png", help=plot_help)
    add_device_argument(parser)
    return parser


def selected_steps(run, args, all_by_default=False):
    """--all-steps (or no --step, with all_by_default): every snapshot; else [--step], None
    standing for the latest weights."""
    if args.all_steps or (all_by_default and args.step is None):
        return run.snapshot_steps.tolist()
    return [args.step]


def step_and_tokens(run, step):
    """(step, training tokens) of snapshot `step`; None: the latest weights'."""
    if step is None:
        return run.step, run.tokens
    return int(step), run.tokens_at(step)


def snapshots(run, steps):
    """(step, tokens, HeadScores) for each of `steps` (None: the latest weights)."""
    for step in steps:
        scores = HeadScores.of_run(run, step)      # first: an unknown step is a ValueError
        yield (*step_and_tokens(run, step), scores)


def value(x):
    """NaN (undefined) -> None; NumPy scalars -> Python."""
    x = float(x)
    return None if math.isnan(x) else x


def text(x, fmt="{:.3f}"):
    """A table cell: "-" for None, numbers by `fmt`, anything else as it is."""
    return "-" if x is None else fmt.format(x) if isinstance(x, float) else str(x)


def _score(name):
    return lambda scores, layer, head: value(getattr(scores, name)[layer, head])


# a row's fields, each read from a snapshot's HeadScores: (scores, layer, head) -> value
FIELDS = {"prefix_matching_score": _score("prefix_matching"),
          "copying_score": _score("copying"),
          "previous_token_score": _score("previous_token"),
          "ov_copying_score": _score("ov_copying"),
          "qk_positivity_score": _score("qk_positivity"),
          "prev_token_qk_trace": _score("prev_token_qk_trace"),
          "prev_token_qk_trace_normalised": _score("prev_token_qk_trace_normalised"),
          "k_composition_partner": lambda s, l, h: str(s.k_composition_partner[l, h]) or None,
          "k_composition_score": _score("k_composition"),
          "k_composition_baseline": lambda s, l, h: s.k_composition_baseline if l > 0 else None,
          "class": lambda s, l, h: str(s.classes[l, h])}


def head_rows(step, tokens, scores, fields, columns=None):
    """One dict per head of a snapshot: step, tokens, layer, head, then `fields` (names in
    FIELDS) and `columns` ({name: (L,H) array}, more values)."""
    cfg = scores.model.config
    rows = []
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            row = dict(step=step, tokens=tokens, layer=layer, head=head)
            row.update({name: FIELDS[name](scores, layer, head) for name in fields})
            row.update({name: value(x[layer, head]) for name, x in (columns or {}).items()})
            rows.append(row)
    return rows


Column = namedtuple("Column", "header width cell align", defaults=(">",))
Column.__doc__ = """A table column: header, width, cell(row) -> str, align ">" or "<"."""


def column(header, width, field, fmt="{:.3f}"):
    """A column that shows one row field."""
    return Column(header, width, lambda row: text(row[field], fmt))


def format_table(rows, columns, last="class"):
    """A fixed-width table, one line per (step, head): step, tokens, head, `columns`, and
    the field `last` unpadded at the end."""
    lines = [f"{'step':>8} {'tokens':>11} {'head':>5}"
             + "".join(f" {c.header:{c.align}{c.width}}" for c in columns) + f"  {last}"]
    for r in rows:
        lines.append(f"{r['step']:>8} {r['tokens']:>11,} {r['layer']:>3}.{r['head']:<1}"
                     + "".join(f" {c.cell(r):{c.align}{c.width}}" for c in columns)
                     + f"  {r[last]}".rstrip())
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the Agg backend (writes PNGs, needs no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, title):
    """Title and lay out `fig`, write it to `path` as a PNG (atomically), close it."""
    plt = pyplot()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)



