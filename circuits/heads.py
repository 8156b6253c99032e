"""python -m circuits.heads RUN.npz [--step S | --all-steps] [--json] [--ablate] [--validate]

Every head of a run's model scored by the paper's head activation evaluators (method (3)):
  prefix_matching_score   attention to the token after an earlier copy of the present token
                          (BOS + 25 random tokens x 4; uniform attention scores ~0.03)
  copying_score           does its direct effect raise the attended token's logit, in [-1, 1]
                          (0 = no preference, as a random head)
  previous_token_score    mean attention from i to i-1 on --examples eval sequences
  class                   circuits.evaluators.classify_heads: induction (prefix matching and
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

from minitransformer.io import atomic_write, output_file

from minitransformer.data import candidate_tokens
from minitransformer.runs import Run

from .ablation import ablation_losses, icl_change, icl_score
from .evaluators import (COPYING_THRESHOLD, PREFIX_MATCHING_THRESHOLD, PREVIOUS_TOKEN_THRESHOLD,
                         classify_heads, copying_score, prefix_matching_score,
                         previous_token_score)
from .cli import run_parser
from .threads import blas_threads
from .weights import ov_copying_score, prev_token_qk_trace

FIELDS = ["step", "tokens", "layer", "head", "prefix_matching_score", "copying_score",
          "previous_token_score", "class"]
EVALUATOR_LENGTH = 25   # the evaluators' random sequences


def _value(x):
    """NaN (undefined) -> None; NumPy scalars -> Python."""
    x = float(x)
    return None if math.isnan(x) else x


def evaluator_counts(run):
    """The run's token counts for the evaluators' random tokens, or None (every token but BOS)
    when the corpus has too few distinct tokens left after dropping the most and least common."""
    pool = candidate_tokens(run.token_counts)
    return run.token_counts if len(pool) >= EVALUATOR_LENGTH else None


def head_scores(model, examples, token_counts=None):
    """The three evaluators and the class of every head -> {name: (L,H) array}."""
    scores = dict(prefix_matching_score=prefix_matching_score(model, token_counts=token_counts),
                  copying_score=copying_score(model, token_counts=token_counts),
                  previous_token_score=previous_token_score(model, examples))
    scores["class"] = classify_heads(scores["prefix_matching_score"], scores["copying_score"],
                                     scores["previous_token_score"])
    return scores


def _step_and_tokens(run, step):
    if step is None:   # the latest weights
        return int(run.data.get("state.step", -1)), int(run.data.get("state.tokens", -1))
    return int(step), run.tokens_at(step)


def run_rows(run, steps, n_examples=10, ablate=False, n_eval=None):
    """One dict per (step, head) for each step in `steps` (None: the latest weights); with
    `ablate`, icl_change from a pattern-preserving ablation of each head on the first n_eval
    eval sequences (all by default), and clean_icl_score, the unablated model's.
    -> (rows, {step: clean ICL score})."""
    examples = run.eval_tokens[:n_examples]
    counts = evaluator_counts(run)
    rows, clean_icl = [], {}
    for step in steps:
        model = run.model(step)
        scores = head_scores(model, examples, counts)
        step, tokens = _step_and_tokens(run, step)
        if ablate:
            result = ablation_losses(model, run.eval_tokens[:n_eval], method="pattern-preserving")
            change = icl_change(result).reshape(model.config.n_layers, model.config.n_heads)
            clean_icl[step] = icl_score(result.clean)
        for layer in range(model.config.n_layers):
            for head in range(model.config.n_heads):
                row = dict(step=step, tokens=tokens, layer=layer, head=head)
                row.update({k: _value(scores[k][layer, head]) for k in FIELDS[4:7]})
                row["class"] = str(scores["class"][layer, head])
                if ablate:
                    row["icl_change"] = _value(change[layer, head])
                rows.append(row)
    return rows, clean_icl


def _text(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x)


def format_table(rows):
    """A fixed-width table, one line per (step, head)."""
    ablated = bool(rows) and "icl_change" in rows[0]
    lines = [f"{'step':>8} {'tokens':>11} {'head':>5} {'prefix':>7} {'copying':>8} {'prev_tok':>8}"
             + (f" {'icl_change':>10}" if ablated else "") + "  class"]
    for r in rows:
        lines.append(f"{r['step']:>8} {r['tokens']:>11,} {r['layer']:>3}.{r['head']:<1} "
                     f"{_text(r['prefix_matching_score']):>7} {_text(r['copying_score']):>8} "
                     f"{_text(r['previous_token_score']):>8}"
                     + (f" {_text(r['icl_change'], '{:+.4f}'):>10}" if ablated else "")
                     + f"  {r['class']}")
    return "\n".join(lines)


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


def validation_points(run, steps, n_examples=10):
    """Every head of every snapshot in `steps`: {name: (S*L*H,)} for the empirical scores,
    ov_copying_score, prev_token_qk_trace (raw and normalised; NaN in layer 0), layer, tokens."""
    counts = evaluator_counts(run)
    examples = run.eval_tokens[:n_examples]
    points = {k: [] for k in ("tokens", "layer", "copying_score", "prefix_matching_score",
                              "ov_copying_score", "prev_token_qk_trace",
                              "prev_token_qk_trace_normalised")}
    for step in steps:
        model = run.model(step)
        scores = head_scores(model, examples, counts)
        trace, normalised = prev_token_qk_trace(model, scores["previous_token_score"])
        L, H = trace.shape
        points["tokens"].append(np.full(L * H, _step_and_tokens(run, step)[1]))
        points["layer"].append(np.repeat(np.arange(L), H))
        for name, value in (("copying_score", scores["copying_score"]),
                            ("prefix_matching_score", scores["prefix_matching_score"]),
                            ("ov_copying_score", ov_copying_score(model)),
                            ("prev_token_qk_trace", trace),
                            ("prev_token_qk_trace_normalised", normalised)):
            points[name].append(np.asarray(value, dtype=float).ravel())
    return {k: np.concatenate(v) for k, v in points.items()}


def correlations(points):
    """[{empirical, analytic, n, pearson, spearman}] for each of PAIRS, NaN pairs left out."""
    out = []
    for empirical, analytic in PAIRS:
        x, y = points[analytic], points[empirical]
        keep = ~(np.isnan(x) | np.isnan(y))
        out.append(dict(empirical=empirical, analytic=analytic, n=int(keep.sum()),
                        pearson=_value(pearson(x[keep], y[keep])),
                        spearman=_value(spearman(x[keep], y[keep]))))
    return out


def plot_validation(points, stats, path, title):
    """One scatter per pair: analytic score (x) against the evaluator's (y), one point per
    head and snapshot, coloured by layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        ax.set_title(f"Pearson {_text(s['pearson'], '{:.2f}')}, Spearman "
                     f"{_text(s['spearman'], '{:.2f}')} (n={s['n']})", fontsize=9)
        if s["n"]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no head with both scores defined\n(layer-0 heads have no trace)",
                    ha="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    parser = run_parser("python -m circuits.heads", __doc__)
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--ablate", action="store_true",
                        help="add each head's pattern-preserving ablation's change in ICL score")
    parser.add_argument("--n-eval", type=int, help="eval sequences for --ablate (default: all)")
    parser.add_argument("--examples", type=int, default=10,
                        help="eval sequences for the previous-token score (default 10)")
    parser.add_argument("--validate", action="store_true",
                        help="correlate with the weight-based scores over every snapshot")
    parser.add_argument("--plot", metavar="OUT.png", help="--validate's scatter plots "
                        "(default <run dir>/heads_validate.png)")
    args = parser.parse_args(argv)
    try:
        for name in ("n_eval", "examples"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")
        if args.plot:
            output_file(args.plot, "--plot")
        run = Run(args.run)
        with blas_threads(1):   # small products on a busy machine: threads only cost
            if args.validate:
                steps = run.snapshot_steps.tolist() if args.all_steps or args.step is None else [args.step]
                points = validation_points(run, steps, args.examples)
                stats = correlations(points)
            else:
                steps = run.snapshot_steps.tolist() if args.all_steps else [args.step]
                rows, clean_icl = run_rows(run, steps, args.examples, args.ablate, args.n_eval)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.validate:
        plot_path = pathlib.Path(args.plot) if args.plot else run.dir / "heads_validate.png"
        try:
            plot_validation(points, stats, plot_path, f"{run.path}: {len(steps)} snapshots x "
                            f"{run.config.n_layers * run.config.n_heads} heads")
        except OSError as e:
            print(f"error: --plot {plot_path}: cannot write ({e.strerror or e})", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(dict(snapshots=len(steps), correlations=stats, plot=str(plot_path)), indent=1))
        else:
            print(f"# {run.path}: every head of {len(steps)} snapshots; analytic (x) vs evaluator (y)")
            for s in stats:
                print(f"{s['empirical']:>22} vs {s['analytic']:<31} Pearson {_text(s['pearson']):>6}  "
                      f"Spearman {_text(s['spearman']):>6}  (n={s['n']})")
            print(f"plot: {plot_path}")
        return 0
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"# {run.path}: {run.config.n_layers} layers x {run.config.n_heads} heads; class: induction "
          f"if prefix >= {PREFIX_MATCHING_THRESHOLD} and copying >= {COPYING_THRESHOLD}, else "
          f"previous-token if prev_tok >= {PREVIOUS_TOKEN_THRESHOLD}")
    if args.ablate:
        print("# icl_change: ICL score with the head removed (pattern-preserving) minus without; "
              "clean ICL score " + ", ".join(f"{v:+.4f} (step {k})" for k, v in clean_icl.items()))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
