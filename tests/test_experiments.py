"""The Model Analysis Table's numbers (experiments.table), figures and report on synthetic
measurements, where the right answer is known."""
from types import SimpleNamespace

import numpy as np
import pytest

from circuits import icl_score
from experiments import figures, table, timeseries
from experiments.report import coloured_text


def _step_curve(tokens, at, drop, noise=0.0, seed=0):
    """An ICL score that falls by `drop` over the snapshots around `at`."""
    rng = np.random.default_rng(seed)
    return -drop / (1 + np.exp(-(tokens - at) / (tokens[-1] / 60))) + noise * rng.normal(size=len(tokens))


def test_icl_curve_equals_icl_score_of_the_full_losses():
    rng = np.random.default_rng(0)
    losses = rng.random((3, 7, 63)).astype(np.float32)            # (S, N, T-1)
    curve = timeseries.icl_curve(losses.mean(1))
    assert np.allclose(curve, [icl_score(l) for l in losses], atol=1e-6)
    assert np.allclose(timeseries.icl_curve(losses.mean(1), 5, 40), [icl_score(l, 5, 40) for l in losses], atol=1e-6)


@pytest.mark.parametrize("at", [1.5e6, 3e6, 4.5e6])
def test_icl_window_brackets_the_fall(at):
    tokens = np.linspace(0, 6e6, 50)
    window = timeseries.icl_window(tokens, _step_curve(tokens, at, 0.4, noise=0.005))
    assert window is not None and window[0] < at < window[1]
    assert window[1] - window[0] < 2e6                              # a window, not the whole run


def test_no_window_without_a_fall():
    tokens = np.linspace(0, 6e6, 50)
    assert timeseries.icl_window(tokens, np.zeros(50)) is None
    assert timeseries.icl_window(tokens, _step_curve(tokens, 3e6, 0.02)) is None     # under MIN_FALL
    assert timeseries.icl_window(tokens, -_step_curve(tokens, 3e6, 0.4)) is None     # a rise


def test_loss_bump_is_the_rise_above_the_best_so_far_inside_the_window():
    tokens = np.arange(10.0)
    loss = np.array([5, 4, 3.5, 3.7, 3.9, 3.0, 2.0, 2.1, 2.0, 1.9])
    assert timeseries.loss_bump(tokens, loss, (2, 6)) == pytest.approx(0.4)
    assert timeseries.loss_bump(tokens, loss, (6, 9)) == pytest.approx(0.1)
    assert np.isnan(timeseries.loss_bump(tokens, loss, None))


def test_dloss_dlog_index_recovers_a_log_slope():
    i = np.arange(1, 256)
    ctx_loss = np.stack([3 - 0.2 * np.log(i), 4 + 0.0 * i])
    slope = figures.dloss_dlog_index(ctx_loss)
    assert np.allclose(slope[0], -0.2) and np.allclose(slope[1], 0.0)


def _model(name, random_loss, n_layers=2, n_heads=2, window=None, ablation_random=None):
    S, N = random_loss.shape
    tokens = np.linspace(0, 1e6, S)
    m = SimpleNamespace(tokens=tokens, steps=np.arange(S), random_loss=random_loss, n_layers=n_layers,
                        ablation_random=ablation_random if ablation_random is not None
                        else np.zeros((2, n_layers * n_heads, N)))
    return SimpleNamespace(name=name, m=m, window=window)


def test_joint_pca_fits_every_model_together():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=40)
    a = np.outer(np.linspace(0, 1, 10), direction) + 0.01 * rng.normal(size=(10, 40))
    b = np.outer(np.linspace(0, -2, 12), direction) + 0.01 * rng.normal(size=(12, 40))
    coords, ratio = table.joint_pca([_model("a", a), _model("b", b)])
    assert coords["a"].shape == (10, 2) and coords["b"].shape == (12, 2)
    assert ratio[0] > 0.99 and ratio.sum() <= 1 + 1e-9
    # both trajectories lie along the same first component, in opposite directions
    assert np.sign(np.diff(coords["a"][:, 0]).mean()) == -np.sign(np.diff(coords["b"][:, 0]).mean())
    assert abs(np.ptp(coords["b"][:, 0]) / np.ptp(coords["a"][:, 0]) - 2) < 0.05


def test_before_and_after_vector_points_back_to_before():
    before, after = np.full(8, 3.0), np.full(8, 1.0)
    after[:4] = 2.0
    random_loss = np.stack([before, before, after, after])
    model = _model("m", random_loss, window=(random_loss.shape[0] and 1 / 3 * 1e6, 2 / 3 * 1e6))
    i, j, u = table.before_after(model.m, model.window)
    assert (i, j) == (1, 2) and np.isclose(np.linalg.norm(u), 1)
    # ablating a head that undoes the phase change projects positively; its opposite negatively
    assert (before - after) @ u > 0 and (after - before) @ u < 0


def test_template_lines_keep_documents_apart():
    text = b"\x00month: May\nanimal: cat\nmonth: May\n\x00month: June\nmonth: June\n"
    lines = table.template_lines(np.frombuffer(text, np.uint8))
    assert [(c, d) for c, _, _, d in lines] == [(b"month", 1), (b"animal", 1), (b"month", 1),
                                                 (b"month", 2), (b"month", 2)]
    cat, start, end, _ = lines[1]
    assert text[start:end] == b"animal: cat\n"


def test_coloured_text_escapes_and_colours_each_byte():
    data = b"a<b\nc"
    page = coloured_text(data, np.array([1.0, 1, 1, 1, 1]), np.array([0.0, 1, 2, 1, 1]))
    assert page.count("<span") == 5 and "&lt;" in page and "<br>" in page
    assert "rgba(40,90,220,1.00)" in page and "rgba(220,50,40,1.00)" in page   # easier / harder


def test_prefix_onset_anchors_the_window_past_an_early_noisy_dip():
    tokens = np.linspace(0, 6e6, 50)
    icl = _step_curve(tokens, 4e6, 0.3)
    icl[8:11] -= [0.3, 0.6, 0.3]                                    # an early dip, then back
    assert timeseries.icl_window(tokens, icl)[1] < 2e6                   # alone: the dip wins
    window = timeseries.icl_window(tokens, icl, near=(3.8e6, 4.3e6))
    assert window[0] < 4e6 < window[1]


def test_noise_alone_is_no_phase_change():
    tokens = np.linspace(0, 6e6, 50)
    for seed in range(20):
        noisy = np.random.default_rng(seed).normal(0, 0.05, 50)     # falls of 0.1 happen by chance
        assert timeseries.icl_window(tokens, noisy) is None, seed
    assert timeseries.icl_window(tokens, _step_curve(tokens, 3e6, 0.4, noise=0.05)) is not None
