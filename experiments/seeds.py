"""The Model Analysis Table over seeds: every cell the median and the range over the seeds of a
model, every acceptance check with the number of seeds on which it holds. The paper shows one
run per model; a reproduction shows how much a row moves.

A column is (header, value of one ModelAnalysis, format): a value is a float, NaN where the
model has none (no window: no window edges), or a string for the head names.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """The median and range of one column over the seeds that have a value (n of total)."""
    median: float
    low: float
    high: float
    n: int
    total: int

    def format(self, spec):
        if self.n == 0:
            return "-"
        text = format(self.median, spec)
        if self.total > 1 and self.n > 1:
            text += f" [{format(self.low, spec)}, {format(self.high, spec)}]"
        if self.n < self.total:
            text += f" ({self.n}/{self.total} seeds)"
        return text


def spread(values):
    """-> Spread of a list of floats, NaNs left out (counted in total)."""
    values = np.asarray(values, dtype=float)
    have = values[~np.isnan(values)]
    if not len(have):
        return Spread(float("nan"), float("nan"), float("nan"), 0, len(values))
    return Spread(float(np.median(have)), float(have.min()), float(have.max()), len(have),
                  len(values))


def by_model(models):
    """ModelAnalysis of every seed -> {name: [its seeds' ModelAnalysis, by seed]}, in the
    order the names first appear."""
    groups = {}
    for m in models:
        groups.setdefault(m.name, []).append(m)
    return {name: sorted(ms, key=lambda m: m.seed) for name, ms in groups.items()}


def _edge(i):
    return lambda m: np.nan if m.icl_window is None else m.icl_window[i] / 1e6


def _top_head_share(m):
    """Argument 3 per head: the largest share of the ICL score one head's ablation removes at
    the window's end."""
    share = m.heads.share[0]
    return np.nan if np.isnan(share).all() else float(np.nanmax(share))


def _bump(spread_of, ms):
    size, noise = spread_of(lambda m: m.stats.bump.size), spread_of(lambda m: m.stats.bump.noise)
    above = sum(m.stats.bump.exceeds for m in ms)
    return f"{size.format('.3f')} (noise {noise.format('.3f')}; above it on {above}/{len(ms)})"


# (header, value, format) of the columns that are numbers
COLUMNS = [("ICL window start (M tokens)", _edge(0), ".2f"),
           ("ICL window end", _edge(1), ".2f"),
           ("final ICL (nats)", lambda m: float(m.icl[-1]), "+.3f"),
           ("share of the ICL fall in the window", lambda m: m.stats.share_in_window, ".0%"),
           ("ICL change after the window", lambda m: m.stats.change_after, "+.3f"),
           ("prefix rise start (M)",
            lambda m: np.nan if m.prefix_rise is None else m.prefix_rise[0] / 1e6, ".2f"),
           ("window anywhere, overlap with the prefix rise", lambda m: m.stats.co_occurrence, ".0%"),
           ("ICL removed by ablating the induction heads",
            lambda m: m.shares.get("induction heads", np.nan), ".0%"),
           ("... all other heads", lambda m: m.shares.get("all other heads", np.nan), ".0%"),
           ("best single head at the window's end", _top_head_share, ".0%")]


def row(ms):
    """The cells of one model over its seeds ms: [name, seeds, *COLUMNS, loss bump, heads]."""
    def spread_of(value):
        return spread([value(m) for m in ms])
    heads = " / ".join(", ".join(m.induction_heads) or "none" for m in ms)
    return ([ms[0].name, ", ".join(str(m.seed) for m in ms)]
            + [spread_of(value).format(spec) for _, value, spec in COLUMNS]
            + [_bump(spread_of, ms), heads])


HEADERS = (["model", "seeds"] + [header for header, _, _ in COLUMNS]
           + ["loss bump (paper: departure from convexity, nats)", "induction heads (by seed)"])


def markdown_table(models):
    """The summary over seeds as a Markdown table (docs/model-analysis-table.md shows it): one
    row per model, each cell the median [range] over its seeds."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row(ms)) + " |" for ms in by_model(models).values()]
    return "\n".join(lines)


def seed_groups(models):
    """ModelAnalysis of every seed -> {seed: {name: ModelAnalysis}}."""
    out = {}
    for m in models:
        out.setdefault(m.seed, {})[m.name] = m
    return dict(sorted(out.items()))


def checks_over_seeds(models, acceptance):
    """Every check of acceptance({name: ModelAnalysis}) run on each seed's models ->
    [(statement, {seed: what was measured}, seeds on which it holds, seeds checked)], in the
    order of their first appearance."""
    results = {}
    for seed, group in seed_groups(models).items():
        for statement, measured, holds in acceptance(group):
            entry = results.setdefault(statement, ({}, []))
            entry[0][seed] = measured
            entry[1].append(bool(holds))
    return [(statement, measured, sum(holds), len(holds))
            for statement, (measured, holds) in results.items()]
