"""Exercise 12: the ICL score against circuits.icl_score, pattern-preserving ablations
against circuits.ablation_losses, and the known answer of the hand-built circuit."""
import numpy as np
import pytest

from circuits import ablation_losses, icl_score, induction_model, repeated_random_tokens
from exercises.harness import check_close, fail, load
from minitransformer import Model

ex = load("ex12_ablation_icl")


def random_model():
    return Model(dict(n_layers=2, d_model=32, n_heads=2, n_ctx=24, d_vocab=40, attn_only=True,
                      normalization_type=None, initializer_range=0.5), seed=8, dtype=np.float64)


def off_by_one(losses, early, late, window):
    """Index i read as column i (it is column i - 1)."""
    last = losses.shape[1] - 1
    around = lambda i: losses[:, min(max(0, i - window), last):min(last, i + window) + 1].mean()
    return around(late) - around(early)


@pytest.mark.checks("icl_score")
def test_icl_score_matches_the_library():
    losses = np.random.default_rng(0).uniform(0, 5, (5, 63))
    for early, late, window in [(6, 62, 1), (10, 40, 3), (1, 63, 2), (20, 30, 0)]:
        check_close(f"icl_score(early={early}, late={late}, half_window={window})",
                    ex.icl_score(losses, early, late, window),
                    icl_score(losses, early, late, window), "circuits.icl_score", rtol=1e-9,
                    mistakes={"context index i is column i - 1 of losses":
                              off_by_one(losses, early, late, window)},
                    hint="average columns index-1-w .. index-1+w (indices clipped to 1 .. "
                         "n_ctx-1) over every sequence; late minus early")


@pytest.mark.checks("pattern_preserving_losses")
def test_pattern_preserving_losses_match_the_library():
    model = random_model()
    tokens = np.random.default_rng(1).integers(0, 40, (4, 24))
    for layer, head in [(0, 1), (1, 0)]:
        expected = ablation_losses(model, tokens, [(layer, head)], "pattern-preserving").ablated[0]
        full = ablation_losses(model, tokens, [(layer, head)], "full").ablated[0]
        check_close(f"losses without head {layer}.{head}",
                    ex.pattern_preserving_losses(model, tokens, layer, head), expected,
                    "circuits.ablation_losses(..., 'pattern-preserving')", rtol=1e-5, atol=1e-6,
                    mistakes={"that is a full ablation: replay the clean run's patterns "
                              "(interventions.replay) so only the values see the head's absence": full})


@pytest.mark.checks("icl_change")
def test_the_hand_built_circuit():
    """Ablating the induction head kills in-context learning. Ablating the previous-token
    head with patterns preserved does not: its only job was to shape head 1.0's pattern."""
    model = induction_model(d_vocab=32, n_ctx=64)
    tokens = repeated_random_tokens(6, 20, 3, None, 32, seed=0)
    change = ex.icl_change(model, tokens, early=10, late=55, half_window=2)
    if np.shape(change) != (2, 1):
        fail(f"icl_change should be (n_layers, n_heads) = (2, 1), got {np.shape(change)}")
    if not change[1, 0] > 1.0:
        fail(f"removing the hand-built induction head 1.0 should make late tokens much "
             f"harder (ICL score up by several nats); yours changes it by {change[1, 0]:+.2f}")
    if not abs(change[0, 0]) < 0.1:
        fail(f"with patterns preserved, removing head 0.0 should change nothing (head 1.0 "
             f"still attends where it did and copies the token it finds); yours changes the "
             f"ICL score by {change[0, 0]:+.2f}: are the patterns replayed?")
