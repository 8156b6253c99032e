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


def test_loss_rise_above_minimum_is_the_rise_above_the_best_so_far_inside_the_window():
    tokens = np.arange(10.0)
    loss = np.array([5, 4, 3.5, 3.7, 3.9, 3.0, 2.0, 2.1, 2.0, 1.9])
    assert timeseries.loss_rise_above_minimum(tokens, loss, (2, 6)) == pytest.approx(0.4)
    assert timeseries.loss_rise_above_minimum(tokens, loss, (6, 9)) == pytest.approx(0.1)
    assert np.isnan(timeseries.loss_rise_above_minimum(tokens, loss, None))


def test_a_convex_curve_is_its_own_minorant_and_has_no_bump():
    tokens = np.linspace(0, 10e6, 50)
    loss = 1.5 + 4 * np.exp(-tokens / 1e6) + 0.3 * np.exp(-tokens / 4e6)       # convex, falling
    assert np.allclose(timeseries.convex_minorant(tokens, loss), loss)
    bump = timeseries.loss_bump(tokens, loss)
    assert bump.size == pytest.approx(0.0, abs=1e-12) and not bump.exceeds


def test_the_minorant_of_a_steeper_stretch_is_the_chord_across_it():
    x = np.arange(5.0)
    y = np.array([0.0, -1, -2, -5, -5.5])       # slopes -1, -1, -3, -0.5: not convex at x = 1, 2
    assert np.allclose(timeseries.convex_minorant(x, y), [0, -5 / 3, -10 / 3, -5, -5.5])


def test_a_steeper_stretch_is_a_bump_of_its_size_where_it_starts():
    """Slopes -a over [0, 4M], -3a over [4M, 5M], then -a again (a = 0.05 nats per M): the
    minorant is the chord from the start to 5M, 0.08 nats below the curve at 4M; the 5-point
    average rounds the two corners by at most 0.006 nats each."""
    tokens = np.linspace(0, 10e6, 101)                                  # 0.1M apart
    a = 0.05 / 1e6
    slope = np.where((tokens >= 4e6) & (tokens < 5e6), -3 * a, -a)
    loss = 3 + np.concatenate([[0], np.cumsum(slope[:-1] * np.diff(tokens))])
    bump = timeseries.loss_bump(tokens, loss)
    assert 0.08 - 2 * 0.006 <= bump.size <= 0.08 and bump.exceeds
    assert 3.8e6 <= bump.at <= 4.2e6                     # the corner, +- the average's reach
    noisy = timeseries.loss_bump(tokens, loss + np.random.default_rng(0).normal(0, 0.01, 101))
    assert noisy.exceeds and 3.5e6 <= noisy.at <= 4.5e6 and noisy.noise < 0.04


def test_noise_on_a_convex_curve_is_no_bump():
    tokens = np.linspace(0, 10e6, 50)
    loss = 1.5 + 4 * np.exp(-tokens / 1e6) + 0.3 * np.exp(-tokens / 4e6)
    for seed in range(20):
        bump = timeseries.loss_bump(tokens, loss + np.random.default_rng(seed).normal(0, 0.01, 50))
        assert bump.size > 0 and not bump.exceeds, seed          # noise makes gaps, not bumps


def test_a_step_puts_all_of_its_fall_inside_its_window_and_none_after():
    tokens = np.linspace(0, 10e6, 50)
    icl = np.where(tokens < 4e6, 0.0, -0.4)
    prefix = np.where(tokens < 4e6, 0.03, 0.6)[:, None, None] * np.ones((1, 2, 2))
    stats = timeseries.phase_statistics(tokens, icl, 2 - 0.1 * tokens / 1e7, tokens, prefix)
    assert stats.icl_window[0] < 4e6 < stats.icl_window[1]
    assert stats.share_in_window == pytest.approx(1.0)
    assert stats.change_after == pytest.approx(0.0) and stats.share_after == pytest.approx(0.0)
    assert stats.icl_window_anywhere == stats.icl_window and stats.co_occurrence == 1.0


def test_a_fall_that_goes_on_after_its_window_is_shared_out_by_construction():
    """The ICL score falls 0.25 at 1.4M-1.6M (the steepest), 0.2 at 4.0M-4.5M with the
    prefix-matching rise, then 0.2 more, ten times slower, to 10M: of the whole fall of 0.65,
    0.2 in the window (31%) and 0.2 after it (31%); the steepest fall anywhere lies apart
    from the prefix rise."""
    tokens = np.linspace(0, 10e6, 101)
    piece = lambda a, b: np.clip((tokens - a) / (b - a), 0, 1)       # noqa: E731
    icl = -0.25 * piece(1.4e6, 1.6e6) - 0.2 * piece(4e6, 4.5e6) - 0.2 * piece(4.5e6, 10e6)
    prefix = piece(4e6, 4.5e6)[:, None, None] * np.ones((1, 2, 1))
    stats = timeseries.phase_statistics(tokens, icl, np.zeros(101), tokens, prefix)
    w = stats.icl_window                           # widened by the rule's 5-point smoothing
    assert 3.7e6 <= w[0] <= 4e6 and 4.5e6 <= w[1] <= 4.8e6
    assert stats.share_in_window == pytest.approx(0.2 / 0.65, abs=0.03)
    assert stats.share_after == pytest.approx(0.2 / 0.65, abs=0.03)
    assert stats.change_after == pytest.approx(-0.2, abs=0.01)
    assert stats.icl_window_anywhere[0] < 1.5e6 < stats.icl_window_anywhere[1] <= 2e6
    assert stats.co_occurrence == 0.0
    # how sharp: prefix matching's 10%->90% rise is 4.1M -> 4.5M (measured every 0.1M); across
    # it the 3-point-smoothed ICL score goes from -0.2 * 0.6/3 to -0.2 * 2.8/3 (plus a trace of
    # the slow fall after 4.5M): 0.147 of the whole 0.65
    assert stats.prefix_rise == (4.1e6, 4.5e6)
    assert stats.rise_ratio == pytest.approx(4.5 / 4.1) and stats.rise_share == pytest.approx(0.04)
    assert stats.share_in_rise == pytest.approx(0.2 * (2.8 - 0.6) / 3 / 0.65, abs=0.005)
    assert np.isnan(timeseries.rise_ratio(None)) and np.isnan(timeseries.rise_share(None, 1e6))
    assert timeseries.overlap_share((0, 4), (3, 5)) == 0.5 and timeseries.overlap_share((1, 2), (0, 9)) == 1


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
    return SimpleNamespace(name=name, measurements=m, icl_window=window)


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
    i, j, u = table.before_after(model.measurements, model.icl_window)
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
    page = coloured_text(["a", "<", "b", "\n", "c"], np.array([1.0, 1, 1, 1, 1]), np.array([0.0, 1, 2, 1, 1]))
    assert page.count("<span") == 5 and "&lt;" in page and "<br>" in page
    assert "rgba(40,90,220,1.00)" in page and "rgba(220,50,40,1.00)" in page   # easier / harder


def test_the_prefix_rise_anchors_the_window_past_an_early_noisy_dip():
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


def test_an_ablation_share_needs_in_context_learning_to_remove():
    assert table.removed_share(np.array([0.1, -0.05]), -0.2).tolist() == [0.5, -0.25]
    assert np.isnan(table.removed_share(np.array([0.01]), -0.01)).all()   # a ratio of noise
    assert np.isnan(table.removed_share(np.array([0.01]), 0.02)).all()
