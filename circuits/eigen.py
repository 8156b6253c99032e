"""python -m circuits.eigen RUN.npz [--step S | --all-steps] [--json | --csv] [--plot out.png]

Per head of a run's model, the weight-based scores of the paper's Argument 5 and method (4),
beside the empirical ones they are checked against, all from circuits.scores (one sample,
HEAD_SAMPLE):
  ov_copying_score                 eigenvalues of the full OV circuit: sum(l)/sum(|l|)
  qk_positivity_score              the same for the token-token full QK circuit
  prev_token_qk_trace              trace of the Id (x) h_prev (x) W term's combined W
  prev_token_qk_trace_normalised   ... divided by ||W||_F, comparable across training
  k_composition_partner/score/baseline  the earlier head this one K-composes with most,
                                   its composition score and the random baseline
  previous_token_score             mean attention from i to i-1 on the first 16 eval sequences
  prefix_matching_score            circuits.evaluators.prefix_matching_score
  copying_score                    circuits.evaluators.copying_score, beside ov_copying_score
  class                            circuits.scores.classify_heads, as circuits.heads prints it
Default: the run's latest weights. --all-steps: every snapshot (the time series the paper
plots in its "Trace of QK eigenvalues" row; --plot draws it).
"""
import csv
import io
import json
import sys

import numpy as np

from minitransformer.io import cannot_write, error, output_file
from minitransformer.runs import Run

from .cli import (Column, column, format_table, head_rows, pyplot,
                  run_parser, save_figure, selected_steps, snapshots)
from .evaluators import require_n_ctx
from .scores import CLASS_RULE
from minitransformer.cpu import command_settings

FIELDS = ["step", "tokens", "layer", "head", "ov_copying_score", "qk_positivity_score",
          "prev_token_qk_trace", "prev_token_qk_trace_normalised", "k_composition_partner",
          "k_composition_score", "k_composition_baseline", "previous_token_score",
          "prefix_matching_score", "copying_score", "class"]


def _k_composition(row):
    if row["k_composition_partner"] is None:
        return "-"
    return (f"{row['k_composition_partner']} {row['k_composition_score']:.3f} "
            f"({row['k_composition_baseline']:.3f})")


COLUMNS = [column("ov_copy", 8, "ov_copying_score"), column("copying", 8, "copying_score"),
           column("qk_pos", 7, "qk_positivity_score"),
           column("prev_tok", 8, "previous_token_score"), column("prefix", 7, "prefix_matching_score"),
           column("qk_trace", 10, "prev_token_qk_trace", "{:.4g}"),
           column("trace/|W|", 9, "prev_token_qk_trace_normalised"),
           Column("k_comp (baseline)", 22, _k_composition, "<")]


def run_rows(run, steps):
    """Rows (keys FIELDS) for each step in `steps` (None: the latest weights) of a Run."""
    return [row for step, tokens, scores in snapshots(run, steps)
            for row in head_rows(step, tokens, scores, FIELDS[4:])]


def format_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return out.getvalue().rstrip("\n")


def plot(rows, path, title):
    """The prev-token QK trace (raw and normalised) against training tokens, one line per
    head of layer >= 1, coloured by layer (line style tells the heads of a layer apart)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    layers = sorted({r["layer"] for r in rows})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, max(len(layers), 1)))
    heads = sorted({(r["layer"], r["head"]) for r in rows if r["layer"] > 0})
    for ax, field, label in zip(axes, ("prev_token_qk_trace", "prev_token_qk_trace_normalised"),
                                ("trace of W", "trace of W / ||W||_F")):
        for layer, head in heads:
            series = [(r["tokens"], r[field]) for r in rows
                      if (r["layer"], r["head"]) == (layer, head) and r[field] is not None]
            if series:
                x, y = zip(*sorted(series))
                ax.plot(x, y, marker="." if len(x) < 3 else None, color=colours[layer],
                        linestyle=("-", "--", ":", "-.")[head % 4], label=f"{layer}.{head}")
        if not heads:
            ax.text(0.5, 0.5, "undefined for 1-layer models", ha="center", transform=ax.transAxes)
        ax.set_xscale("symlog", linthresh=max(1, min((r["tokens"] for r in rows if r["tokens"] > 0), default=1)))
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_title("Trace of QK eigenvalues (previous-token term)")
    if heads:
        axes[1].legend(fontsize=7, ncol=2)
    save_figure(fig, path, title)


def main(argv=None):
    parser = run_parser("python -m circuits.eigen", __doc__, "every snapshot: the time series",
                        formats=("json", "csv"), plot_help="draw the prev-token QK trace over steps")
    args = parser.parse_args(argv)
    try:
        if args.plot:
            output_file(args.plot, "--plot")
        run = Run(args.run, args.device)
        require_n_ctx(run.config.n_ctx, "python -m circuits.eigen")
        with command_settings():
            rows = run_rows(run, selected_steps(run, args))
    except ValueError as e:
        return error(e)
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.csv:
        print(format_csv(rows))
    else:
        print(f"# {run.path}: {run.config.n_layers} layers x {run.config.n_heads} heads; "
              f"class: {CLASS_RULE}")
        print(format_table(rows, COLUMNS))
    if args.plot:
        try:
            plot(rows, args.plot, f"{run.path}")
        except OSError as e:
            return cannot_write("--plot", args.plot, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
