"""The rows of the Model Analysis Table as matplotlib functions, and the figures made of them.

Each row is row(ax, model) for one model (a ModelAnalysis, experiments.table); x is
training tokens (millions) unless noted, and the phase-change window is shaded on every row.
Heads are coloured by their class at the end of training (induction, previous-token,
other), or by layer with colour="layer".
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minitransformer.io import atomic_write  # noqa: E402

from .timeseries import (BUMP_SMOOTHING, best_later_head, convexity_gap, icl_curve,  # noqa: E402
                         index_pairs, moving_average)

CLASS_COLOURS = {"induction": "#d62728", "previous-token": "#1f77b4", "other": "#9a9a9a"}


def _x(model):
    return model.measurements.tokens / 1e6


def _shade(ax, model):
    """The ICL window (orange) and the start of the prefix-matching rise (dashed)."""
    if model.icl_window is not None:
        start, end = model.icl_window
        ax.axvspan(start / 1e6, end / 1e6, color="orange", alpha=0.25, lw=0)
    if model.prefix_rise is not None:
        ax.axvline(model.prefix_rise[0] / 1e6, color="#7b3294", lw=0.8, ls="--")


def _head_colour(model, l, h, colour):
    if colour == "layer":
        return f"C{l}"
    return CLASS_COLOURS[str(model.measurements.classes[l, h])]


def _heads(ax, model, x, values, colour, skip_layer0=False):
    """One line per head: values (K, L, H) or (K, L*H)."""
    L, H = int(model.measurements.n_layers), int(model.measurements.n_heads)
    values = np.asarray(values).reshape(len(x), L, H)
    for l in range(1 if skip_layer0 else 0, L):
        for h in range(H):
            ax.plot(x, values[:, l, h], color=_head_colour(model, l, h, colour), lw=1.1, alpha=0.9)


def row_loss(ax, model, colour=None):
    log = model.run.log
    loss = np.asarray(log["loss"])
    k = max(1, len(loss) // 150)
    ax.plot(np.asarray(log["tokens"])[k - 1:] / 1e6, np.convolve(loss, np.ones(k) / k, "valid"),
            lw=0.7, color="C0", label="train")
    ax.plot(_x(model), model.eval_loss, color="C1", lw=1.2, label="eval")
    ax.set_ylim(top=min(ax.get_ylim()[1], float(model.eval_loss[min(2, len(_x(model)) - 1)]) + 0.5))


def row_bump(ax, model, colour=None):
    """The paper's loss bump: the smoothed eval loss's gap above its convex minorant, and the
    gap noise alone makes (dashed); a bump is where the curve rises above the dashed line."""
    bump = model.stats.bump
    if np.isnan(bump.size):
        return
    x, _, gap = convexity_gap(model.measurements.tokens.astype(float), model.eval_loss, BUMP_SMOOTHING)
    ax.plot(x / 1e6, gap, color="C1", lw=1.2)
    ax.axhline(bump.noise, color="k", lw=0.7, ls="--")
    ax.set_ylim(0, max(bump.noise, bump.size) * 1.2)


def _heatmap(ax, model, values, cmap, centred=False):
    n = values.shape[1]
    index = np.arange(1, n + 1)
    later = values[1:] if len(values) > 1 else values     # the untrained model would set the scale
    if centred:
        lim = np.nanpercentile(np.abs(later), 98)
        vmin, vmax = -lim, lim
    else:
        vmin, vmax = np.nanpercentile(later, [1, 99])
    ax.pcolormesh(_x(model), index, values.T, cmap=cmap, shading="nearest", vmin=vmin, vmax=vmax)
    ax.set_yscale("log")


def row_loss_heatmap(ax, model, colour=None):
    _heatmap(ax, model, model.measurements.ctx_loss, "viridis")


def dloss_dlog_index(ctx_loss, width=0.15):
    """dLoss/dln(i) of each snapshot's context-index losses (S, T-1), smoothed over a window
    of +-width in ln(i) so a single index's noise does not dominate."""
    log_i = np.log(np.arange(1, ctx_loss.shape[1] + 1))
    out = np.empty_like(ctx_loss, dtype=float)
    for j, c in enumerate(log_i):
        near = np.abs(log_i - c) <= width
        if near.sum() < 3:
            near = np.argsort(np.abs(log_i - c))[:3]
        slope = np.polyfit(log_i[near], ctx_loss[:, near].T, 1)[0]
        out[:, j] = slope
    return out


def row_loss_derivative(ax, model, colour=None):
    _heatmap(ax, model, dloss_dlog_index(model.measurements.ctx_loss), "RdBu_r", centred=True)


def row_icl(ax, model, colour=None):
    ax.plot(_x(model), model.icl, color="C2", lw=1.4)
    ax.axhline(0, color="k", lw=0.5)


def row_icl_sensitivity(ax, model, colour=None):
    n = model.measurements.ctx_loss.shape[1] + 1
    for k, (early, late) in enumerate(index_pairs(n)[1:]):
        ax.plot(_x(model), icl_curve(model.measurements.ctx_loss, early, late), lw=1, color=f"C{k + 3}",
                label=f"{late} - {early}")
    ax.plot(_x(model), model.icl, color="C2", lw=1.6, label="default")
    ax.axhline(0, color="k", lw=0.5)


def row_prefix(ax, model, colour="class"):
    _heads(ax, model, _x(model), model.measurements.prefix_matching, colour)
    ax.set_ylim(-0.02, 1.02)


def row_qk_trace(ax, model, colour="class"):
    _heads(ax, model, _x(model), model.measurements.prev_token_qk_trace_normalised, colour, skip_layer0=True)
    ax.axhline(0, color="k", lw=0.5)


def row_ablation_icl(ax, model, colour="class"):
    _heads(ax, model, model.ablation_tokens / 1e6, model.measurements.ablation_icl, colour)
    ax.axhline(0, color="k", lw=0.5)


def row_ablation_before_after(ax, model, colour="class"):
    _heads(ax, model, model.ablation_tokens / 1e6, model.attribution, colour)
    ax.axhline(0, color="k", lw=0.5)


ROWS = [("loss", "loss (nats)", row_loss),
        ("bump", "eval loss above its\nconvex minorant", row_bump),
        ("loss_heatmap", "Loss(tokens, context index)", row_loss_heatmap),
        ("loss_derivative", "dLoss / d ln(context index)", row_loss_derivative),
        ("icl", "ICL score (nats)", row_icl),
        ("icl_sensitivity", "ICL score, other index pairs", row_icl_sensitivity),
        ("prefix", "prefix matching", row_prefix),
        ("qk_trace", "prev-token QK trace / |W|", row_qk_trace),
        ("ablation_icl", "ablation: change in ICL score", row_ablation_icl),
        ("ablation_before_after", "ablation: onto before-and-after", row_ablation_before_after)]


def save(fig, path, rect=(0, 0, 1, 1)):
    fig.tight_layout(rect=rect)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)


def table_figure(models, rows, path, colour="class"):
    """A grid: one row per table row, one column per model (the paper's layout)."""
    fig, axes = plt.subplots(len(rows), len(models), figsize=(2.6 * len(models) + 0.6, 2.1 * len(rows)),
                             squeeze=False, sharex="col")
    for r, (key, label, row) in enumerate(rows):
        for c, model in enumerate(models):
            ax = axes[r, c]
            row(ax, model, colour=colour)
            _shade(ax, model)
            ax.grid(alpha=0.25)
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(model.name, fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("tokens (M)", fontsize=8)
        if key == "icl_sensitivity":
            axes[r, -1].legend(fontsize=6, title="late - early", title_fontsize=6)
    if colour == "class" and any(k in ("prefix", "qk_trace") for k, _, _ in rows):
        handles = [plt.Line2D([], [], color=c, label=k) for k, c in CLASS_COLOURS.items()]
        fig.legend(handles=handles, loc="lower center", fontsize=8, ncol=3)
    save(fig, path, rect=(0, 0.015, 1, 1))


def pca_figure(models, coords, ratio, path):
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, model in enumerate(models):
        xy = coords[model.name]
        ax.plot(xy[:, 0], xy[:, 1], "-", color=f"C{k}", lw=1, label=model.name)
        ax.plot(*xy[0], "o", color=f"C{k}", ms=3)
        i, j = model.before_after_steps
        if model.icl_window is not None:
            ax.plot(xy[i:j + 1, 0], xy[i:j + 1, 1], "-", color=f"C{k}", lw=4, alpha=0.4)
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    ax.set_title("per-token losses, all snapshots (thick: phase change)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.25)
    save(fig, path)


def loss_derivative_figure(models, path):
    """The curiosity: dLoss/dln(tokens) of each model on one plot."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, model in enumerate(models):
        t = model.measurements.tokens[1:].astype(float)
        loss = np.asarray(model.eval_loss[1:], dtype=float)
        slope = np.gradient(loss, np.log(t))
        ax.plot(t / 1e6, moving_average(slope, 5), color=f"C{k}", label=model.name)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens (M, log)")
    ax.set_ylabel("dLoss / d ln(tokens)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.25)
    save(fig, path)


def pair_figure(pairs, path):
    """Argument 2: each smeared-key model beside its control: ICL score and best prefix
    matching over training."""
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.5 * len(pairs), 5.5), squeeze=False, sharex="col")
    for c, (model, control) in enumerate(pairs):
        for m, style in ((model, "-"), (control, "--")):
            axes[0, c].plot(_x(m), m.icl, style, label=m.name)
            axes[1, c].plot(_x(m), best_later_head(m.measurements.prefix_matching), style, label=m.name)
            _shade(axes[0, c], m)
        axes[0, c].set_ylabel("ICL score")
        axes[1, c].set_ylabel("best prefix matching")
        axes[1, c].set_xlabel("tokens (M)")
        axes[0, c].legend(fontsize=7)
        for ax in axes[:, c]:
            ax.grid(alpha=0.25)
    save(fig, path)
