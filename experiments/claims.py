"""The paper's claims about the Model Analysis Table, each a check on the models of one seed:
checks({name: ModelAnalysis}) -> [(statement, what was measured, holds)]. The report runs them
on every seed (experiments.seeds.checks_over_seeds) and says on how many each holds.

The paper's words, and the reading here (timeseries.PhaseStatistics has the definitions):
  abrupt window     "develops abruptly in a narrow window": the ICL window rule finds one
  over 75%          "over 75% of final in-context learning forms in this window":
                    share_in_window >= 0.75
  constant after    "then is constant for the rest of training": the ICL score moves by
                    under 10% of its fall after the window (either way)
  the bump          "the only place in training where the loss is not convex": the eval loss's
                    largest departure from convexity is above what noise makes, and lies
                    within one window-width of the window (where the steep fall begins);
                    the 1-layer model "does not display the bump"
  co-occurrence     induction heads form "at precisely the same point": the ICL score's
                    steepest fall found anywhere in training (no restriction to the prefix
                    rise) overlaps the prefix-matching rise by at least half
  1L flat           "except for the one layer model where not much in-context learning
                    ever forms"
  smeared key       Argument 2: the phase change comes to the 1-layer model and comes earlier
  ablation          Argument 3: removing the induction heads removes most of the ICL score
"""
import numpy as np

from .table import percent

SHARE_IN_WINDOW = 0.75
SHARE_AFTER = 0.10
CO_OCCURRENCE = 0.5


def _window(w):
    return "none" if w is None else f"{w[0] / 1e6:.2f}M-{w[1] / 1e6:.2f}M"


def _heads(m):
    return ", ".join(m.induction_heads) or "none"


def bump_near_window(m):
    """The loss bump is above its noise and lies within one window-width of the window."""
    w, b = m.icl_window, m.stats.bump
    if w is None or not b.exceeds:
        return False
    width = w[1] - w[0]
    return w[0] - width <= b.at <= w[1]


def _bump(m):
    b = m.stats.bump
    return (f"{b.size:.3f} nats at {b.at / 1e6:.2f}M (noise {b.noise:.3f}), "
            f"window {_window(m.icl_window)}")


def multi_layer_checks(m):
    """The claims of Argument 1 for one model of two or more layers."""
    s, last = m.stats, int(m.measurements.n_layers) - 1
    return [
        (f"{m.name}: an abrupt ICL window, induction heads in the last layer",
         f"window {_window(m.icl_window)}, induction heads {_heads(m)}",
         m.icl_window is not None and any(int(h.split(".")[0]) == last for h in m.induction_heads)),
        (f"{m.name}: over 75% of the ICL score's fall inside the window",
         "no window" if m.icl_window is None else
         f"{percent(s.share_in_window)} ({s.icl_before:+.3f} -> {s.icl_after:+.3f} of "
         f"{s.icl_start:+.3f} -> {s.icl_final:+.3f})", s.share_in_window >= SHARE_IN_WINDOW),
        (f"{m.name}: the ICL score constant after the window (under 10% of its fall after it)",
         "no window" if m.icl_window is None else
         f"{s.change_after:+.3f} nats after it ({percent(s.share_after)})",
         abs(s.share_after) < SHARE_AFTER),
        (f"{m.name}: a loss bump (departure from convexity above noise) at the window",
         _bump(m), bump_near_window(m)),
        (f"{m.name}: the steepest ICL fall anywhere co-occurs with the prefix-matching rise",
         f"{_window(s.icl_window_anywhere)} vs rise {_window(m.prefix_rise)}: overlap "
         f"{percent(s.co_occurrence)}", s.co_occurrence >= CO_OCCURRENCE)]


def checks(models):
    """The paper's claims on one seed's models {name: ModelAnalysis}, where present."""
    out = []
    for name in ("attn-only-1l", "mlp-1l", "attn-only-ln-1l"):
        if name in models:
            m = models[name]
            out.append((f"{name}: no phase change, no induction head, ICL flat (|final| < 0.1)",
                        f"window {_window(m.icl_window)}, induction heads {_heads(m)}, final ICL "
                        f"{m.icl[-1]:+.3f}",
                        m.icl_window is None and not m.induction_heads and abs(m.icl[-1]) < 0.1))
            out.append((f"{name}: no loss bump", _bump(m), not m.stats.bump.exceeds))
    for family in ("attn-only", "mlp", "attn-only-ln"):
        for n in range(2, 7):
            if f"{family}-{n}l" in models:
                out += multi_layer_checks(models[f"{family}-{n}l"])
    if "smeared-1l" in models:
        m = models["smeared-1l"]
        out.append(("smeared-1l: gets the phase change its control never gets",
                    f"window {_window(m.icl_window)}, induction heads {_heads(m)}",
                    m.icl_window is not None and bool(m.induction_heads)))
    if "smeared-2l" in models and "attn-only-2l" in models:
        s, c = models["smeared-2l"], models["attn-only-2l"]
        out.append(("smeared-2l: phase change earlier than its control",
                    f"{_window(s.icl_window)} vs control {_window(c.icl_window)}",
                    s.icl_window is not None
                    and (c.icl_window is None or s.icl_window[0] < c.icl_window[0])))
    if "attn-only-2l" in models:
        m = models["attn-only-2l"]
        out.append(("attn-only-2l: ablating the induction heads removes most of the ICL score",
                    f"{percent(m.shares.get('induction heads', np.nan))} (all other heads: "
                    f"{percent(m.shares.get('all other heads', np.nan))})",
                    m.shares.get("induction heads", 0) > 0.5))
        share = m.heads.share[0]
        best = np.nan if np.isnan(share).all() else float(np.nanmax(share))
        out.append(("attn-only-2l: one head's ablation alone removes most of the ICL score at "
                    "the window's end", f"{percent(best)} (best single head)",
                    not np.isnan(best) and best > 0.5))
    return out
