"""Exercise 13: the smeared key against the engine and finite differences; then a 1-layer
model trained with the student's smear must grow an induction head (500k tokens under
EXERCISE_FAST; the full check also trains the 1-layer control, which must not)."""
import numpy as np
import pytest

from circuits import prefix_matching_score
from exercises.common import finite_differences
from exercises.harness import FAST, check_close, fail, load
from minitransformer.ops.attention import smear_backward, smear_forward

ex = load("ex13_smeared_keys")


def case(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, 3, 5, 4)), rng.normal(size=3), rng.normal(size=(2, 3, 5, 4))


@pytest.mark.checks("smear_keys")
def test_forward_matches_the_engine():
    k, alpha, _ = case()
    smeared, _ = ex.smear_keys(k.copy(), alpha)
    expected, _ = smear_forward(k, alpha)
    s = 1 / (1 + np.exp(-alpha))[:, None, None]
    check_close("smeared keys", smeared, expected, "minitransformer's smear_forward", rtol=1e-12,
                mistakes={"position 0 has no previous key: it must stay k_0 (use k_0 as its "
                          "own k_prev)": np.concatenate([s * k[:, :, :1], expected[:, :, 1:]], 2),
                          "s = sigmoid(alpha) weighs the present key and 1 - s the previous "
                          "one, not the other way round":
                          smear_forward(k, -alpha)[0]})


@pytest.mark.checks("smear_keys_backward")
def test_backward_matches_finite_differences_and_the_engine():
    k, alpha, dout = case(1)
    _, cache = ex.smear_keys(k, alpha)
    dk, dalpha = ex.smear_keys_backward(dout.copy(), cache)
    check_close("dk", dk, finite_differences(lambda k_: ex.smear_keys(k_, alpha)[0], k, dout),
                "finite differences", atol=1e-8,
                hint="k_j reaches the output twice: s k_j at j and (1 - s) k_j at j + 1; k_0 "
                     "also as its own k_prev at position 0")
    check_close("dalpha", dalpha,
                finite_differences(lambda a: ex.smear_keys(k, a)[0], alpha, dout),
                "finite differences", atol=1e-8,
                hint="dalpha = sum over B, T, E of dsmeared (k - k_prev), times s (1 - s)")
    engine_dk, engine_dalpha = smear_backward(dout.copy(), smear_forward(k, alpha)[1])
    check_close("dk", dk, engine_dk, "minitransformer's smear_backward")
    check_close("dalpha", dalpha, engine_dalpha, "minitransformer's smear_backward")


def best_prefix_matching(run):
    return prefix_matching_score(run.model(), token_counts=run.token_counts).max()


@pytest.mark.checks("smear_keys_backward")
def test_a_one_layer_smeared_model_forms_an_induction_head(tmp_path):
    tokens = 500_000 if FAST else 800_000
    run = ex.train_one_layer(tmp_path / "smeared", smeared=True, total_tokens=tokens)
    best = best_prefix_matching(run)
    if not best > 0.5:
        fail(f"trained with your smear for {tokens:,} tokens, the 1-layer model's best "
             f"prefix-matching score is {best:.2f}; with the engine's it passes 0.9 by 450k "
             f"tokens. Are the gradients right (the tests above), and is position 0 kept?")


@pytest.mark.checks("smear_keys_backward")
@pytest.mark.skipif(FAST, reason="EXERCISE_FAST: the 1-layer control's training is skipped")
def test_the_one_layer_control_does_not(tmp_path):
    best = best_prefix_matching(ex.train_one_layer(tmp_path / "control", smeared=False))
    if not best < 0.2:
        fail(f"the 1-layer control without smeared keys should not form an induction head, "
             f"but its best prefix-matching score is {best:.2f}")
