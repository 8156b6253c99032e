"""The Model Analysis Table over seeds (experiments.seeds): medians and ranges, and the claims
counted seed by seed, on fake rows whose answers are known."""
from types import SimpleNamespace

import numpy as np

from experiments import seeds


def test_spread_is_the_median_and_range_of_the_seeds_that_have_a_value():
    s = seeds.spread([0.3, np.nan, 0.1, 0.2])
    assert (s.median, s.low, s.high, s.n, s.total) == (0.2, 0.1, 0.3, 3, 4)
    assert s.format(".2f") == "0.20 [0.10, 0.30] (3/4 seeds)"
    assert seeds.spread([0.25]).format("+.3f") == "+0.250"                 # one seed: the value
    assert seeds.spread([np.nan, np.nan]).format(".2f") == "-"
    assert seeds.spread([1.0, 2.0]).format(".1f") == "1.5 [1.0, 2.0]"


def _fake(name, seed, window, final):
    """A ModelAnalysis-like row: only what the table's columns read."""
    stats = SimpleNamespace(share_in_window=np.nan if window is None else 0.5, change_after=-0.01,
                            co_occurrence=1.0, bump=SimpleNamespace(size=0.01, noise=0.004,
                                                                     exceeds=seed != 2))
    heads = SimpleNamespace(share=np.array([[0.9, 0.1], [1.0, 0.0]]))
    return SimpleNamespace(name=name, seed=seed, icl_window=window, prefix_rise=window, stats=stats,
                           icl=np.array([0.0, final]), induction_heads=["1.0"] if window else [],
                           shares={"induction heads": 1.0 + seed / 10}, heads=heads)


def test_rows_aggregate_over_seeds_and_keep_every_seeds_heads():
    models = [_fake("a", s, (1e6 * (s + 1), 3e6), -0.1 * (s + 1)) for s in range(3)]
    models.append(_fake("b", 0, None, 0.01))
    groups = seeds.by_model(reversed(models))
    assert [m.seed for m in groups["a"]] == [0, 1, 2]
    cells = dict(zip(seeds.HEADERS, seeds.row(groups["a"])))
    assert cells["seeds"] == "0, 1, 2"
    assert cells["ICL window start (M tokens)"] == "2.00 [1.00, 3.00]"
    assert cells["final ICL (nats)"] == "-0.200 [-0.300, -0.100]"
    assert cells["ICL removed by ablating the induction heads"] == "110% [100%, 120%]"
    assert cells["best single head at the window's end"] == "90% [90%, 90%]"
    assert "above it on 2/3" in cells["loss bump (paper: departure from convexity, nats)"]
    assert cells["induction heads (by seed)"] == "1.0 / 1.0 / 1.0"
    lone = dict(zip(seeds.HEADERS, seeds.row(groups["b"])))
    assert lone["ICL window start (M tokens)"] == "-" and lone["induction heads (by seed)"] == "none"
    assert len(seeds.markdown_table(models).splitlines()) == 4


def test_checks_are_counted_seed_by_seed():
    models = [_fake("a", s, (1e6, 3e6) if s else None, -0.2) for s in range(3)]

    def checks(group):
        m = group["a"]
        return [("a has a window", f"seed {m.seed}", m.icl_window is not None), ("always", "-", True)]
    out = seeds.checks_over_seeds(models, checks)
    assert [(s, held, total) for s, _, held, total in out] == [("a has a window", 2, 3), ("always", 3, 3)]
    assert out[0][1] == {0: "seed 0", 1: "seed 1", 2: "seed 2"}
