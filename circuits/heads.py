"""python -m circuits.heads RUN.npz [--step S | --all-steps] [--json] [--ablate] [--validate]

Every head of a run's model scored by the paper's head activation evaluators (method (3)), on
the one sample of circuits.scores (HEAD_SAMPLE):
  prefix_matching_score   attention to the token after an earlier copy of the present token
                          (BOS + 25 random tokens x 4; uniform attention scores ~0.03)
  copying_score           does its direct effect raise the attended token's logit, in [-1, 1]
                          (0 = no preference, as a random head)
  previous_token_score    mean attention from i to i-1 on the first 16 eval sequences
  class                   circuits.scores.classify_heads: induction (prefix matching and
                          copying above their thresholds), previous-token, or other
  icl_change              (--ablate) the change in ICL score on the run's eval set when the
                          head alone is removed by a pattern-preserving ablation (method (2));
                          positive = the model learns less in context without it
Default: the run's latest weights; --step S a snapshot; --all-steps every snapshot.

--validate: the paper's appendix "Validating head activation evaluators". Over every head of
every snapshot (--step S: of that one only), the empirical copying score against the OV eigenvalue copying score
(circuits.weights.ov_copying_score), and the prefix-matching score against the trace of the
previous-token QK term (prev_token_qk_trace, heads of layer >= 1): Pearson and Spearman
correlations printed, scatter plots written (--plot, default <run dir>/heads_validate.png).
"""
import json
import math
import pathlib
import sys

import numpy as np

from minitransformer.io import cannot_write, error, output_file
from minitransformer.runs import Run

from .ablation import ablation_losses, icl_change
from .cli import (column, format_table, head_rows, pyplot, run_parser,
                  save_figure, selected_steps, snapshots, text, value)
from .evaluators import require_n_ctx
from .icl import icl_score
from .scores import CLASS_RULE
from minitransformer.cpu import command_settings

FIELDS = ["step", "tokens", "layer", "head", "prefix_matching_score", "copying_score",
          "previous_token_score", "class"]
COLUMNS = [column("prefix", 7, "prefix_matching_score"), column("copying", 8, "copying_score"),
           column("prev_tok", 8, "previous_token_score")]


def run_rows(run, steps, ablate=False, n_eval=None):
    """One dict per (step, head) for each step in `steps` (None: the latest weights); with
    `ablate`, icl_change from a pattern-preserving ablation of each head on the first n_eval
    eval sequences (all by default), and clean_icl_score, the unablated model's.
    -> (rows, {step: clean ICL score})."""
    rows, clean_icl = [], {}
    for step, tokens, scores in snapshots(run, steps):
        more = {}
        if ablate:
            result = ablation_losses(scores.model, run.eval_tokens[:n_eval], method="pattern-preserving")
            more["icl_change"] = icl_change(result).reshape(scores.classes.shape)
            clean_icl[step] = icl_score(result.clean)
        rows += head_rows(step, tokens, scores, FIELDS[4:], more)
    return rows, clean_icl


# ---- validation against the weights ------------------------------------------------------

def ranks(x):
    """Ranks 1..n of x, ties given their average rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    rank = np.empty(len(x))
    rank[order] = np.arange(1, len(x) + 1)
    _, group, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=rank) / counts)[group]


def pearson(x, y):
    """Pearson correlation of two vectors; NaN when either is constant or n < 2."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else math.nan


def spearman(x, y):
    """Spearman rank correlation: Pearson of the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y)) if len(x) >= 2 else math.nan


PAIRS = [("copying_score", "ov_copying_score"),
         ("prefix_matching_score", "prev_token_qk_trace"),
         ("prefix_matching_score", "prev_token_qk_trace_normalised")]


def validation_points(run, steps):
    """Every head of every snapshot in `steps`: {name: (S*L*H,)} for the empirical scores,
    ov_copying_score, prev_token_qk_trace (raw and normalised; NaN in layer 0), layer, tokens."""
    points = {k: [] for k in ("tokens", "layer", "copying_score", "prefix_matching_score",
                              "ov_copying_score", "prev_token_qk_trace",
                              "prev_token_qk_trace_normalised")}
    for _, tokens, scores in snapshots(run, steps):
        L, H = scores.classes.shape
        points["tokens"].append(np.full(L * H, tokens))
        points["layer"].append(np.repeat(np.arange(L), H))
        for name, x in (("copying_score", scores.copying),
                        ("prefix_matching_score", scores.prefix_matching),
                        ("ov_copying_score", scores.ov_copying),
                        ("prev_token_qk_trace", scores.prev_token_qk_trace),
                        ("prev_token_qk_trace_normalised", scores.prev_token_qk_trace_normalised)):
            points[name].append(np.asarray(x, dtype=float).ravel())
    return {k: np.concatenate(v) for k, v in points.items()}


def correlations(points):
    """[{empirical, analytic, n, pearson, spearman}] for each of PAIRS, NaN pairs left out."""
    out = []
    for empirical, analytic in PAIRS:
        x, y = points[analytic], points[empirical]
        keep = ~(np.isnan(x) | np.isnan(y))
        out.append(dict(empirical=empirical, analytic=analytic, n=int(keep.sum()),
                        pearson=value(pearson(x[keep], y[keep])),
                        spearman=value(spearman(x[keep], y[keep]))))
    return out


def plot_validation(points, stats, path, title):
    """One scatter per pair: analytic score (x) against the evaluator's (y), one point per
    head and snapshot, coloured by layer."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(stats), figsize=(5 * len(stats), 4.2))
    layers = points["layer"].astype(int)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, max(layers.max(initial=0) + 1, 1)))
    for ax, s in zip(np.atleast_1d(axes), stats):
        x, y = points[s["analytic"]], points[s["empirical"]]
        for layer in np.unique(layers):
            keep = (layers == layer) & ~np.isnan(x) & ~np.isnan(y)
            if keep.any():
                ax.scatter(x[keep], y[keep], s=10, alpha=0.6, color=colours[layer],
                           label=f"layer {layer}")
        ax.set_xlabel(s["analytic"])
        ax.set_ylabel(s["empirical"])
        ax.set_title(f"Pearson {text(s['pearson'], '{:.2f}')}, Spearman "
                     f"{text(s['spearman'], '{:.2f}')} (n={s['n']})", fontsize=9)
        if s["n"]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no head with both scores defined\n(layer-0 heads have no trace)",
                    ha="center", transform=ax.transAxes)
    save_figure(fig, path, title)


def print_validation(run, steps, stats, plot_path, as_json):
    if as_json:
        print(json.dumps(dict(snapshots=len(steps), correlations=stats, plot=str(plot_path)), indent=1))
        return
    print(f"# {run.path}: every head of {len(steps)} snapshots; analytic (x) vs evaluator (y)")
    for s in stats:
        print(f"{s['empirical']:>22} vs {s['analytic']:<31} Pearson {text(s['pearson']):>6}  "
              f"Spearman {text(s['spearman']):>6}  (n={s['n']})")
    print(f"plot: {plot_path}")


def print_rows(run, rows, clean_icl, as_json):
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    print(f"# {run.path}: {run.config.n_layers} layers x {run.config.n_heads} heads; class: {CLASS_RULE}")
    columns = COLUMNS
    if clean_icl:
        print("# icl_change: ICL score with the head removed (pattern-preserving) minus without; "
              "clean ICL score " + ", ".join(f"{v:+.4f} (step {k})" for k, v in clean_icl.items()))
        columns = COLUMNS + [column("icl_change", 10, "icl_change", "{:+.4f}")]
    print(format_table(rows, columns))


def main(argv=None):
    parser = run_parser("python -m circuits.heads", __doc__, plot_help="--validate's scatter "
                        "plots (default <run dir>/heads_validate.png)")
    parser.add_argument("--ablate", action="store_true",
                        help="add each head's pattern-preserving ablation's change in ICL score")
    parser.add_argument("--n-eval", type=int, help="eval sequences for --ablate (default: all)")
    parser.add_argument("--validate", action="store_true",
                        help="correlate with the weight-based scores over every snapshot")
    args = parser.parse_args(argv)
    try:
        if args.n_eval is not None and args.n_eval < 1:
            raise ValueError("--n-eval: must be at least 1")
        if args.plot and not args.validate:
            raise ValueError(f"--plot {args.plot}: draws --validate's scatter plots; add --validate")
        if args.plot:
            output_file(args.plot, "--plot")
        run = Run(args.run, args.device)
        require_n_ctx(run.config.n_ctx, "python -m circuits.heads")
        steps = selected_steps(run, args, all_by_default=args.validate)
        with command_settings():
            if args.validate:
                points = validation_points(run, steps)
                stats = correlations(points)
            else:
                rows, clean_icl = run_rows(run, steps, args.ablate, args.n_eval)
    except ValueError as e:
        return error(e)
    if not args.validate:
        print_rows(run, rows, clean_icl, args.json)
        return 0
    plot_path = pathlib.Path(args.plot) if args.plot else run.dir / "heads_validate.png"
    try:
        plot_validation(points, stats, plot_path, f"{run.path}: {len(steps)} snapshots x "
                        f"{run.config.n_layers * run.config.n_heads} heads")
    except OSError as e:
        return cannot_write("--plot", plot_path, e)
    print_validation(run, steps, stats, plot_path, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
