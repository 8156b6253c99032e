"""python -m circuits.eigen RUN.npz [--step S | --all-steps] [--json | --csv] [--plot out.png]

Per head of a run's model, the weight-based scores of the paper's Argument 5 and method (4),
beside the empirical ones they are checked against:
  ov_copying_score                 eigenvalues of the full OV circuit: sum(l)/sum(|l|)
  qk_positivity_score              the same for the token-token full QK circuit
  prev_token_qk_trace              trace of the Id (x) h_prev (x) W term's combined W
  prev_token_qk_trace_normalised   ... divided by ||W||_F, comparable across training
  k_composition_partner/score/baseline  the earlier head this one K-composes with most,
                                   its composition score and the random baseline
  previous_token_score             mean attention from i to i-1 on the run's eval tokens
  prefix_matching_score            circuits.evaluators.prefix_matching_score
  kind                             "previous-token" (prev_tok >= 0.4), "induction" (copies
                                   >= 0.5, trace/|W| >= 1, and a previous-token head in an
                                   earlier layer), else ""
Default: the run's latest weights. --all-steps: every snapshot (the time series the paper
plots in its "Trace of QK eigenvalues" row; --plot draws it).
"""
import csv
import io
import json
import math
import sys

import numpy as np

from minitransformer.io import atomic_write, output_file

from minitransformer.model import Model
from minitransformer.runs import Run

from .evaluators import PREVIOUS_TOKEN_THRESHOLD, prefix_matching_score, previous_token_score
from .cli import run_parser
from .threads import blas_threads
from .weights import (composition_baseline, composition_scores, ov_copying_score,
                      prev_token_qk_trace, qk_positivity_score)

COPYING_THRESHOLD = 0.5          # ov_copying_score of an induction head
TRACE_THRESHOLD = 1.0            # prev_token_qk_trace_normalised of an induction head;
                                 # random initialisations give |value| < 0.3 (d_model 128)
FIELDS = ["step", "tokens", "layer", "head", "ov_copying_score", "qk_positivity_score",
          "prev_token_qk_trace", "prev_token_qk_trace_normalised", "k_composition_partner",
          "k_composition_score", "k_composition_baseline", "previous_token_score",
          "prefix_matching_score", "kind"]


def _value(x):
    """NaN (undefined) -> None; NumPy scalars -> Python."""
    x = float(x)
    return None if math.isnan(x) else x


def head_rows(model, step, tokens, example_tokens, token_counts=None):
    """One dict per head of `model` (keys FIELDS), the run's snapshot `step` seen after
    `tokens` training tokens. example_tokens (N,T): the text for the previous-token score."""
    cfg = model.config
    previous = previous_token_score(model, example_tokens)
    trace, normalised = prev_token_qk_trace(model, previous)
    copying, positivity = ov_copying_score(model), qk_positivity_score(model)
    k_comp = composition_scores(model)["K"]
    baseline = composition_baseline(cfg.d_model, cfg.d_head)
    try:
        prefix = prefix_matching_score(model, token_counts=token_counts)
    except ValueError:   # too few candidate tokens in this corpus: draw from the vocabulary
        prefix = prefix_matching_score(model)
    rows = []
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            partner = score = None
            scores = k_comp[layer, head, :layer]                         # (layer, H)
            if layer > 0 and not np.isnan(scores).all():
                best = np.unravel_index(np.nanargmax(scores), scores.shape)
                partner, score = f"{best[0]}.{best[1]}", _value(scores[best])
            row = dict(step=int(step), tokens=int(tokens), layer=layer, head=head,
                       ov_copying_score=_value(copying[layer, head]),
                       qk_positivity_score=_value(positivity[layer, head]),
                       prev_token_qk_trace=_value(trace[layer, head]),
                       prev_token_qk_trace_normalised=_value(normalised[layer, head]),
                       k_composition_partner=partner, k_composition_score=score,
                       k_composition_baseline=baseline if layer > 0 else None,
                       previous_token_score=_value(previous[layer, head]),
                       prefix_matching_score=_value(prefix[layer, head]))
            row["kind"] = _kind(row, bool((previous[:layer] >= PREVIOUS_TOKEN_THRESHOLD).any()))
            rows.append(row)
    return rows


def _kind(row, previous_token_below):
    """"induction": copies, its prev-token QK term is same-matching, and an earlier layer
    holds a previous-token head for it to K-compose with (the normalised trace alone cannot
    tell: with one earlier head, the previous-token weight cancels in trace / ||W||_F)."""
    if previous_token_below and (row["ov_copying_score"] or 0) >= COPYING_THRESHOLD and \
            (row["prev_token_qk_trace_normalised"] or 0) >= TRACE_THRESHOLD:
        return "induction"
    if row["previous_token_score"] >= PREVIOUS_TOKEN_THRESHOLD:
        return "previous-token"
    return ""


def run_rows(run, steps, n_examples=4):
    """Rows for each step in `steps` (None: the latest weights) of a Run."""
    examples = run.eval_tokens[:n_examples]
    if len(examples) == 0:
        examples = np.random.default_rng(0).integers(0, run.config.d_vocab, (n_examples, run.config.n_ctx))
    rows = []
    for step in steps:
        model = Model(run.config, params=run.params(step))
        if step is None:
            step, tokens = int(run.data.get("state.step", -1)), int(run.data.get("state.tokens", -1))
        else:
            tokens = run.tokens_at(step)
        rows += head_rows(model, step, tokens, examples, run.token_counts)
    return rows


def _text(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x) if isinstance(x, float) else str(x)


def format_table(rows):
    """A fixed-width table, one line per (step, head)."""
    head = (f"{'step':>8} {'tokens':>11} {'head':>5} {'ov_copy':>8} {'qk_pos':>7} {'prev_tok':>8} "
            f"{'prefix':>7} {'qk_trace':>10} {'trace/|W|':>9}  {'k_comp (baseline)':<22} kind")
    lines = [head]
    for r in rows:
        partner = "-" if r["k_composition_partner"] is None else (
            f"{r['k_composition_partner']} {r['k_composition_score']:.3f} ({r['k_composition_baseline']:.3f})")
        lines.append(
            f"{r['step']:>8} {r['tokens']:>11,} {r['layer']:>3}.{r['head']:<1} "
            f"{_text(r['ov_copying_score']):>8} {_text(r['qk_positivity_score']):>7} "
            f"{_text(r['previous_token_score']):>8} {_text(r['prefix_matching_score']):>7} "
            f"{_text(r['prev_token_qk_trace'], '{:.4g}'):>10} "
            f"{_text(r['prev_token_qk_trace_normalised']):>9}  {partner:<22} {r['kind']}")
    return "\n".join(lines)


def format_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return out.getvalue().rstrip("\n")


def plot(rows, path, title):
    """The prev-token QK trace (raw and normalised) against training tokens, one line per
    head of layer >= 1, coloured by layer (line style tells the heads of a layer apart)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    parser = run_parser("python -m circuits.eigen", __doc__, "every snapshot: the time series")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one object per (step, layer, head)")
    form.add_argument("--csv", action="store_true")
    parser.add_argument("--plot", metavar="OUT.png", help="draw the prev-token QK trace over steps")
    parser.add_argument("--examples", type=int, default=4,
                        help="eval sequences for the previous-token score (default 4)")
    args = parser.parse_args(argv)
    try:
        if args.plot:
            output_file(args.plot, "--plot")
        run = Run(args.run)
        steps = run.snapshot_steps.tolist() if args.all_steps else [args.step]
        with blas_threads(1):   # many small products: threads only cost (circuits/threads.py)
            rows = run_rows(run, steps, args.examples)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.csv:
        print(format_csv(rows))
    else:
        print(f"# {run.path}: {run.config.n_layers} layers x {run.config.n_heads} heads; "
              f"kind: previous-token if prev_tok >= {PREVIOUS_TOKEN_THRESHOLD}; induction if "
              f"ov_copy >= {COPYING_THRESHOLD}, trace/|W| >= {TRACE_THRESHOLD} and a previous-token "
              f"head below")
        print(format_table(rows))
    if args.plot:
        try:
            plot(rows, args.plot, f"{run.path}")
        except OSError as e:
            print(f"error: --plot {args.plot}: cannot write ({e.strerror or e})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
