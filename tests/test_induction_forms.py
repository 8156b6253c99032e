"""Training end to end on the purest induction task: a 2-layer model trained on repeated
random segments (the tiny-induction preset) forms an induction head, and the phase-change
summary finds it. About 40 s on 2 cores."""
import numpy as np
import pytest

from circuits import prefix_matching_score
from experiments.phase_change import analyse
from minitransformer.presets import preset
from minitransformer.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("runs") / "tiny-induction", *preset("tiny-induction"),
                 progress=False)


def test_prefix_matching_rises_in_layer_1(run):
    before = prefix_matching_score(run.model(0), token_counts=run.token_counts)
    after = prefix_matching_score(run.model(), token_counts=run.token_counts)
    assert before.max() < 0.1                 # chance: ~ (earlier repeats) / position
    assert after[1].max() > 0.5               # an induction head in layer 1...
    assert after[0].max() < 0.1               # ...and none in layer 0, which cannot do it alone


def test_summary_finds_the_window_and_the_second_copy_gets_easy(run):
    a = analyse(run, points=4)
    rise = a.stats.prefix_rise
    assert rise is not None and rise[0] < rise[1] <= a.tokens[-1]
    assert any(l == 1 and after > 0.5 for l, _, _, after in a.rising_heads)
    first, second = a.repeated_first_copy[1], a.repeated_second_copy[1]
    assert second < first - 2.0               # the second copy is predicted from the first
    assert np.isfinite(a.icl).all()
