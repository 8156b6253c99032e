"""What happened in a run: the phase change, as `make train-2l` prints it.

    python -m experiments.phase_change runs/attn-only-2l [--control runs/attn-only-1l]

Scores every snapshot's heads (circuits.scores: each snapshot's prefix matching, the last
one's classes), measures the in-context-learning score and eval loss on the run's fixed
eval set at --points snapshots, detects the phase-change window, prints a summary and writes <run>/phase_change.png (three aligned
panels over training tokens: loss, ICL score, each head's prefix matching, window shaded)
and <run>/phase_change.json.
"""
import argparse
import contextlib
import dataclasses
import json
import sys
from dataclasses import dataclass

import numpy as np

from circuits import HeadScores, ablation_losses, icl_change, repeated_random_tokens
from circuits.evaluators import require_n_ctx
from circuits.icl import context_indices, icl_score
from minitransformer.backend import add_device_argument
from minitransformer.cpu import command_settings
from minitransformer.io import (atomic_write, atomic_write_text, cannot_write, error, os_error,
                              output_file)
from minitransformer.runs import Run

from .losses import snapshot_losses
from .measure import N_ABLATE
from .table import percent, removed_share
from .timeseries import PhaseStatistics, evaluated_steps, moving_average, phase_statistics


@dataclass(frozen=True)
class PhaseChange:
    """What analyse() found in one run. S snapshots, K measured ones, L layers, H heads;
    windows are (start, end) training tokens or None."""
    steps: np.ndarray              # (S,) every snapshot
    tokens: np.ndarray             # (S,) its training tokens
    prefix_matching: np.ndarray    # (S,L,H) HeadScores.prefix_matching of each snapshot
    classes: np.ndarray            # (L,H) HeadScores.classes of the last snapshot
    icl_steps: np.ndarray          # (K,) the snapshots whose losses were measured
    icl_tokens: np.ndarray         # (K,)
    icl: np.ndarray                # (K,) ICL score
    eval_loss: np.ndarray          # (K,) mean eval loss
    stats: PhaseStatistics         # the paper's statistics, on the measured snapshots
    rising_heads: list             # [(layer, head, first, last prefix matching)], rose > 0.1
    copying: np.ndarray            # (L,H) HeadScores.copying of the last snapshot, and the
    copying_paper: np.ndarray      #   paper's form of it
    head_ablation: tuple           # ((tokens, (L*H,) share of the ICL score each head's
                                   #   ablation removes), ...) at the ICL window's end and the last
    repeated_first_copy: tuple     # loss on the 1st copy of repeated random tokens, first and
    repeated_second_copy: tuple    #   last snapshot; and on the 2nd copy
    final_train_loss: float        # mean of the last 100 training steps


def repeated_copy_losses(model, token_counts, n=32, length=50, seed=7):
    """Loss on the first and the second copy of BOS + `length` distinct random tokens (the
    evaluators' pool: 80 tokens on the stdlib corpus) repeated twice."""
    length = min(length, (model.config.n_ctx - 1) // 2)
    tokens = repeated_random_tokens(n, length, 2, token_counts, model.config.d_vocab, seed=seed)
    losses = model.per_token_loss(tokens)
    return float(losses[:, 1:length].mean()), float(losses[:, length + 1:].mean())


def analyse(run, points=40):
    """-> PhaseChange: the curves and the summary numbers of a run."""
    steps, tokens = run.snapshot_steps, run.snapshot_tokens
    prefix = []
    for step in steps:
        scores = HeadScores.of_run(run, step)
        prefix.append(scores.prefix_matching)
    pm = np.stack(prefix)                                               # (S, L, H)
    chosen = evaluated_steps(steps, points)
    losses = [snapshot_losses(run, s) for s in chosen]
    icl = np.array([icl_score(l) for l in losses])
    chosen_tokens = np.array([run.tokens_at(s) for s in chosen])
    stats = phase_statistics(chosen_tokens, icl, [float(l.mean()) for l in losses], tokens, pm)
    first_copy, second_copy = zip(*(repeated_copy_losses(run.model(s), run.token_counts)
                                    for s in (steps[0], steps[-1])))
    rising = [(l, h, float(pm[0, l, h]), float(pm[-1, l, h]))
              for l in range(pm.shape[1]) for h in range(pm.shape[2])
              if pm[-1, l, h] - pm[0, l, h] > 0.1]
    ablated = [] if stats.icl_window is None else [chosen[np.searchsorted(chosen_tokens,
                                                                          stats.icl_window[1])]]
    return PhaseChange(steps=steps, tokens=tokens, prefix_matching=pm, classes=scores.classes,
                       icl_steps=chosen, icl_tokens=chosen_tokens, icl=icl,
                       eval_loss=np.array([float(l.mean()) for l in losses]), stats=stats,
                       rising_heads=rising, copying=scores.copying,
                       copying_paper=scores.copying_paper,
                       head_ablation=tuple((run.tokens_at(s), head_shares(run, s))
                                           for s in ablated + [steps[-1]]),
                       repeated_first_copy=first_copy, repeated_second_copy=second_copy,
                       final_train_loss=float(np.mean(run.log["loss"][-100:])))


def head_shares(run, step, n=N_ABLATE):
    """Argument 3 per head: the share of the ICL score (on the first n eval sequences) that
    each head's pattern-preserving ablation removes at snapshot `step` -> (L*H,)."""
    result = ablation_losses(run.model(step), run.eval_tokens[:n])
    return removed_share(icl_change(result), icl_score(result.clean))


SYNTHETIC_CORPORA = {
    "synthetic:repeated": "SYNTHETIC: random segments of random tokens, each repeated 2-4 times",
    "synthetic:template": "SYNTHETIC: template lines 'category: word', each category bound to "
                          "one word per document"}


def data_line(run):
    """What the model was trained on: a synthetic corpus said to be one, and the synthetic
    assistance of a natural one named when there was any."""
    tc = run.train_config
    name = run.corpus["name"]
    planted = [f"{share:.0%} of windows {what}" for share, what in
               ((tc.get("synthetic_fraction", 0), "replaced by repeated random tokens"),
                (tc.get("repeat_fraction", 0), "given a repeated span")) if share]
    if name in SYNTHETIC_CORPORA or name.startswith("synthetic:"):
        kind = SYNTHETIC_CORPORA.get(name, "SYNTHETIC text")
        what = kind + ("; also " + ", ".join(planted) if planted else "")
    else:
        what = "SYNTHETIC-ASSISTED: " + ", ".join(planted) if planted else "natural text only"
    return f"  training data: {name} (sha256 {run.corpus['sha256'][:12]}), {what}"


def control_run(run, control):
    """`control` (a Run) if it can be `run`'s 1-layer control: one layer, and not the run
    itself; else a one-line ValueError naming --control."""
    if control.dir.resolve() == run.dir.resolve():
        raise ValueError(f"--control {control.dir}: is the run itself; the control is a "
                         f"separate 1-layer run")
    if control.config.n_layers != 1:
        raise ValueError(f"--control {control.dir}: a {control.config.n_layers}-layer run; the "
                         f"control must be a 1-layer run")
    require_n_ctx(control.config.n_ctx, "python -m experiments.phase_change (--control)")
    return control


def summary_lines(run, a, control=None):
    early, late = context_indices(run.config.n_ctx)
    lines = [f"{run.dir}: {run.config.n_layers}-layer, {int(a.tokens[-1]):,} training tokens",
             data_line(run),
             f"  final train loss {a.final_train_loss:.3f}   eval loss {a.eval_loss[0]:.3f} -> "
             f"{a.eval_loss[-1]:.3f}",
             f"  ICL score (loss at index {late} minus index {early}, {len(run.eval_tokens)} eval "
             f"sequences): {a.icl[0]:+.3f} -> {a.icl[-1]:+.3f} nats",
             f"  repeated random tokens, loss on 1st copy / 2nd copy: start "
             f"{a.repeated_first_copy[0]:.2f} / {a.repeated_second_copy[0]:.2f}, end "
             f"{a.repeated_first_copy[1]:.2f} / {a.repeated_second_copy[1]:.2f}"]
    st = a.stats
    if st.prefix_rise is None:
        lines.append("  phase change: none detected (no layer>=1 head's prefix matching rose by 0.1)"
                     if run.config.n_layers > 1 else
                     "  phase change: none detected (no head's prefix matching rose by 0.1)")
    else:
        inside = "" if np.isnan(st.share_in_rise) else f"; {st.share_in_rise:.0%} of the ICL fall inside it"
        lines.append(f"  phase change window (prefix matching 10%->90% of its rise): "
                     f"{_m(st.prefix_rise[0])} -> {_m(st.prefix_rise[1])} tokens "
                     f"(x{st.rise_ratio:.2f} in tokens, {st.rise_share:.0%} of the run{inside})")
    if st.icl_window is not None:
        lines.append(f"  ICL score's steepest fall near that rise (the Model Analysis Table's "
                     f"window): {_m(st.icl_window[0])} -> {_m(st.icl_window[1])} tokens")
        lines.append(f"  ICL score across it (averaged over 3 measurements): {st.icl_before:+.3f} -> "
                     f"{st.icl_after:+.3f} nats: {percent(st.share_in_window)} of its fall "
                     f"({st.icl_start:+.3f} -> {st.icl_final:+.3f}) inside the window (paper: over "
                     f"75%), {st.change_after:+.3f} after it ({percent(st.share_after)}; paper: constant)")
    if st.icl_window_anywhere is not None:
        lines.append(f"  ICL score's steepest fall anywhere (no restriction): "
                     f"{_m(st.icl_window_anywhere[0])} -> {_m(st.icl_window_anywhere[1])} tokens, "
                     f"overlapping the prefix-matching rise by {percent(st.co_occurrence)}")
    lines.append("  " + bump_line(st.bump))
    heads = ", ".join(f"{l}.{h}: {b:.2f} -> {e:.2f}" for l, h, b, e in a.rising_heads)
    lines.append(f"  heads whose prefix matching rose: {heads or 'none'}")
    lines.append("  at the end (circuits.scores): " + "; ".join(
        f"{kind} heads {', '.join(f'{l}.{h}' for l, h in zip(*np.nonzero(a.classes == kind))) or 'none'}"
        for kind in ("induction", "previous-token")))
    induction = list(zip(*np.nonzero(a.classes == "induction")))
    if induction:
        lines.append("  copying score of the induction heads, ours (chance 0) / the paper's form "
                     "(chance -0.85): " + ", ".join(
                         f"{l}.{h} {a.copying[l, h]:+.2f} / {a.copying_paper[l, h]:+.2f}"
                         for l, h in induction))
    H = a.classes.shape[1]
    labels = (["at the window's end"] if len(a.head_ablation) == 2 else []) + ["at the end"]
    for where, (tokens, share) in zip(labels, a.head_ablation):
        best = np.argsort(-np.nan_to_num(share, nan=-np.inf))[:3]
        lines.append(f"  ICL score removed by ablating each head alone, {where} ({_m(tokens)}): "
                     + ", ".join(f"{k // H}.{k % H} {percent(share[k])}" for k in best))
    if control is not None:
        lines.append(control_gap_line(a, control))
        lines.append("  1-layer control's " + bump_line(control.stats.bump))
    return lines


def _m(tokens):
    return f"{tokens / 1e6:.2f}M"


def bump_line(bump, who="eval loss"):
    """The paper's loss bump in one line."""
    if np.isnan(bump.size):
        return f"loss bump: too few measurements of the {who}"
    return (f"loss bump (the {who}'s largest departure from convexity): {bump.size:.3f} nats at "
            f"{_m(bump.at)}, noise alone makes {bump.noise:.3f}: "
            + ("a bump" if bump.exceeds else "no bump above the noise"))


def control_gap_line(a, control):
    """The loss bump as the gap between this model's eval loss and its 1-layer control's, at
    the measurements both have (the same snapshot tokens when trained alike)."""
    shared, mine, theirs = np.intersect1d(a.icl_tokens, control.icl_tokens,
                                          return_indices=True)
    if len(shared) < 2:
        return "  eval loss minus the control's: no shared measurement points"
    gap = a.eval_loss[mine] - control.eval_loss[theirs]
    smooth = moving_average(gap, 5)
    steepest = int(np.argmin(np.diff(smooth)))
    return (f"  eval loss minus the 1-layer control's: {gap[0]:+.3f} -> {gap[-1]:+.3f} nats; "
            f"steepest fall (smoothed over 5 measurements) {shared[steepest] / 1e6:.2f}M -> "
            f"{shared[steepest + 1] / 1e6:.2f}M tokens ({smooth[steepest + 1] - smooth[steepest]:+.3f})")


def plot(run, a, path, control=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    x = np.asarray(run.log["tokens"]) / 1e6
    loss = np.asarray(run.log["loss"])
    k = max(1, len(loss) // 200)
    axes[0].plot(x[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), lw=0.8, label="train (smoothed)")
    axes[0].plot(a.icl_tokens / 1e6, a.eval_loss, "o-", ms=3, label="eval")
    if control is not None:
        axes[0].plot(control.icl_tokens / 1e6, control.eval_loss, "s--", ms=3,
                     label="1-layer control, eval")
    axes[0].set_ylabel("loss (nats)")
    axes[0].legend(fontsize=8)
    axes[1].plot(a.icl_tokens / 1e6, a.icl, "o-", ms=3, color="C2")
    if control is not None:
        axes[1].plot(control.icl_tokens / 1e6, control.icl, "s--", ms=3, color="C7",
                     label="1-layer control")
        axes[1].legend(fontsize=8)
    early, late = context_indices(run.config.n_ctx)
    axes[1].set_ylabel(f"ICL score\nloss[{late}] - loss[{early}]")
    pm = a.prefix_matching
    for l in range(pm.shape[1]):
        for h in range(pm.shape[2]):
            axes[2].plot(a.tokens / 1e6, pm[:, l, h], color=f"C{l}", lw=1,
                         label=f"layer {l}" if h == 0 else None)
    axes[2].set_ylabel("prefix matching")
    axes[2].set_xlabel("training tokens (millions)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        if a.stats.prefix_rise is not None:
            rise = a.stats.prefix_rise
            ax.axvspan(rise[0] / 1e6, rise[1] / 1e6, color="orange", alpha=0.2)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{run.dir.name}: phase change" + ("" if a.stats.prefix_rise else " (none detected)"))
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def to_json(a):
    """A PhaseChange as JSON: one key per field, arrays as lists, NaN as null."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, np.ndarray):
            return plain(value.tolist())
        if isinstance(value, (float, np.floating)):
            return None if np.isnan(value) else float(value)
        return value.item() if isinstance(value, np.generic) else value
    return json.dumps(plain(a))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory or its run.npz")
    parser.add_argument("--control", help="a 1-layer control run to draw beside it")
    parser.add_argument("--points", type=int, default=40,
                        help="snapshots at which to measure the ICL score (default 40)")
    parser.add_argument("--png", help="figure path (default <run>/phase_change.png)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    png = None
    try:
        if args.points < 2:
            raise ValueError(f"--points {args.points}: must be at least 2")
        run = Run(args.run, args.device)
        require_n_ctx(run.config.n_ctx, "python -m experiments.phase_change")
        control = control_run(run, Run(args.control, args.device)) if args.control else None
        png = output_file(args.png or run.dir / "phase_change.png", "--png")
        with command_settings(blas=None):
            control = analyse(control, args.points) if control is not None else None
            a = analyse(run, args.points)
        plot(run, a, png, control)
    except ValueError as e:
        return error(e)
    except OSError as e:      # the figure (a full disk: no file name on the error)
        return cannot_write("--png", png, e) if png is not None else os_error(e, args.run)
    print("\n".join(summary_lines(run, a, control)))
    with contextlib.suppress(OSError):   # a cache beside the run: none in a read-only run folder
        atomic_write_text(run.dir / "phase_change.json", to_json(a))
    print(f"  figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
