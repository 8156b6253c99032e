from types import SimpleNamespace

import numpy as np

from circuits.icl import context_indices, icl_score, loss_at_index
from experiments.timeseries import rise_window


def test_icl_indices_scale_the_papers_50_and_500_of_512():
    assert context_indices(512) == (50, 500)
    assert context_indices(256) == (25, 250)


def test_icl_score_reads_the_right_positions():
    n_ctx = 256
    losses = np.tile(np.linspace(3.0, 1.0, n_ctx - 1), (4, 1))   # loss falls along the context
    early, late = context_indices(n_ctx)
    assert np.isclose(loss_at_index(losses, early, 0), losses[0, early - 1])
    expected = losses[0, late - 1] - losses[0, early - 1]
    assert np.isclose(icl_score(losses, half_window=0), expected) and expected < 0
    assert np.isclose(icl_score(losses), expected, atol=1e-9)   # linear: the window averages out


def test_rise_window_finds_a_step_and_ignores_flat_noise():
    x = np.arange(100) * 1e5
    step = 0.03 + 0.5 / (1 + np.exp(-(np.arange(100) - 60) / 2))
    start, end = rise_window(x, step)
    assert 5.0e6 < start < 6.0e6 < end < 7.0e6
    noise = 0.03 + 0.01 * np.random.default_rng(0).standard_normal(100)
    assert rise_window(x, noise) is None


def test_the_gap_to_the_control_finds_the_bump():
    from experiments.phase_change import control_gap_line
    tokens = np.arange(0, 41) * 2.5e5
    control = SimpleNamespace(icl_tokens=tokens, eval_loss=2.0 - 0.01 * np.arange(41))
    drop = 0.3 / (1 + np.exp(-(np.arange(41) - 20) / 1.5))          # 2L pulls away near 5M
    mine = SimpleNamespace(icl_tokens=tokens, eval_loss=control.eval_loss - drop)
    line = control_gap_line(mine, control)
    start, end = [float(t.rstrip("M")) for t in line.split("smoothed over 5 measurements) ")[1]
                  .split(" tokens")[0].split(" -> ")]
    assert 4.5 <= start < end <= 5.5 and "-> -0.300 nats" in line
    apart = SimpleNamespace(icl_tokens=tokens + 1, eval_loss=mine.eval_loss)
    assert "no shared measurement points" in control_gap_line(apart, control)


def test_the_summary_names_synthetic_assistance():
    from experiments.phase_change import data_line
    corpus = {"name": "python-stdlib", "sha256": "210e555d4e3e" + "0" * 52}
    natural = SimpleNamespace(corpus=corpus, train_config={"synthetic_fraction": 0.0,
                                                           "repeat_fraction": 0.0})
    assert data_line(natural).endswith("natural text only") and "210e555d4e3e" in data_line(natural)
    mixed = SimpleNamespace(corpus=corpus, train_config={"synthetic_fraction": 0.5,
                                                         "repeat_fraction": 0.0})
    assert "SYNTHETIC-ASSISTED: 50% of windows replaced by repeated random tokens" in data_line(mixed)
