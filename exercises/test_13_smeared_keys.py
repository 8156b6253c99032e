"""Exercise 13: the smeared key against the engine and finite differences; then a 1-layer
model trained with the student's smear must grow an induction head (500k tokens under
EXERCISE_FAST; the full check also trains the 1-layer control, which must not).

The training checks first run the forward and gradient checks and, if one fails, fail at
once naming it, without training: a smear with a wrong gradient can still grow an induction
head of sorts, and a training run takes half a minute to say less. Every expected value comes
from the engine (minitransformer.ops.attention's smear_forward, smear_backward) or from finite
differences; a failure names the quantity, where it differs (which positions, which heads)
and what that points to.

Sizes all differ (batch 2, 3 heads, 5 positions, d_head 4), so that a wrong axis shows."""
import numpy as np
import pytest

from circuits import prefix_matching_score
from exercises.common import finite_differences
from exercises.harness import FAST, check_close, check_shape, fail, load
from minitransformer.ops.attention import smear_backward, smear_forward

ex = load("ex13_smeared_keys")

B, H, T, E = 2, 3, 5, 4


def case(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, H, T, E)), rng.normal(size=H), rng.normal(size=(B, H, T, E))


def sigmoid(alpha):
    return 1 / (1 + np.exp(-alpha))


def smear(k, alpha):
    """The student's smear_keys; a broadcasting error is named, not a traceback."""
    try:
        return ex.smear_keys(k, alpha)
    except ValueError as error:
        if "broadcast" in str(error):
            fail(f"smear_keys: {error}. s = sigmoid(alpha) holds one value per head: shape it "
                 f"so that it meets k (B, H, T, E) = {k.shape} on the head axis (1)")
        raise


def engine_smear_along(k, alpha, axis):
    """The engine's smear applied along `axis` of k instead of the positions (axis 2)."""
    return np.swapaxes(smear_forward(np.swapaxes(k, axis, 2), alpha)[0], axis, 2)


def forward_mistakes(k, alpha):
    """{what is wrong: the smeared keys it gives}, each from the engine."""
    padded = np.concatenate([np.zeros_like(k[:, :, :1]), k], axis=2)
    return {"position 0 is changed: with no key before it, it must stay k_0 (it is its own "
            "previous key), not be mixed with zeros":
            smear_forward(padded, alpha)[0][:, :, 1:],
            "s = sigmoid(alpha) must weigh the present key and 1 - s the previous one, not "
            "the other way round": smear_forward(k, -alpha)[0],
            "each key is mixed with the next one, k_{j+1}, not the previous one k_{j-1}":
            smear_forward(k[:, :, ::-1], alpha)[0][:, :, ::-1],
            "it mixes neighbouring d_head components (axis 3), not positions (axis 2)":
            engine_smear_along(k, alpha, 3),
            "it mixes neighbouring examples of the batch (axis 0), not positions (axis 2)":
            engine_smear_along(k, alpha, 0)}


@pytest.mark.checks("smear_keys")
def test_forward_matches_the_engine():
    k, alpha, _ = case()
    smeared, _ = smear(k.copy(), alpha)
    expected, _ = smear_forward(k, alpha)
    check_shape("smeared keys", smeared, expected.shape, "the smeared keys have k's shape")
    check_close("smeared keys", smeared, expected, "minitransformer's smear_forward", rtol=1e-12,
                mistakes=forward_mistakes(k, alpha))


def positions_where(yours, expected):
    """The positions (axis 2) at which yours differs from expected."""
    gap = np.abs(np.asarray(yours, dtype=np.float64) - expected).max(axis=(0, 1, 3))
    return [int(j) for j in np.flatnonzero(gap > 1e-8 * max(1.0, np.abs(expected).max()))]


def dk_mistake(dk, expected, swapped):
    """What the positions where dk is wrong point to (swapped: dk with s and 1 - s swapped)."""
    dk = np.asarray(dk, dtype=np.float64)
    if np.allclose(dk, swapped, rtol=1e-6, atol=1e-9):
        return ("dk weighs the routes with s and 1 - s swapped: s weighs k_j where it is the "
                "present key, 1 - s where it is the previous one")
    where = positions_where(dk, expected)
    if where == [0]:
        return ("dk differs at position 0 only: k_0 reaches the output by one route more than "
                "the other keys (it is position 0's previous key too)")
    if where == list(range(T - 1)):
        return (f"dk differs at every position but the last ({T - 1}): a route that every key "
                f"but the last has is missing or wrong: k_j is also position j + 1's previous "
                f"key")
    return f"dk differs at positions {where} (of 0 to {T - 1})" if where else ""


def dalpha_mistake(dalpha, expected, s):
    """What dalpha's difference points to, in words, or ''."""
    dalpha = np.asarray(dalpha, dtype=np.float64)
    if dalpha.shape != expected.shape:
        return ""
    if np.allclose(dalpha * s * (1 - s), expected, rtol=1e-6, atol=1e-10):
        return ("dalpha lacks the sigmoid's derivative: alpha reaches the output only through "
                "s = sigmoid(alpha), so the chain rule passes through the sigmoid")
    if np.allclose(dalpha, -expected, rtol=1e-6, atol=1e-10):
        return ("dalpha has the wrong sign: which of k and k_prev grows in the mix as s "
                "grows?")
    heads = [int(h) for h in np.flatnonzero(~np.isclose(dalpha, expected, rtol=1e-6,
                                                          atol=1e-10))]
    return f"dalpha differs at head(s) {heads} (of 0 to {H - 1})"


@pytest.mark.checks("smear_keys_backward")
def test_backward_matches_finite_differences_and_the_engine():
    k, alpha, dout = case(1)
    smeared, cache = smear(k, alpha)
    dk, dalpha = ex.smear_keys_backward(dout.copy(), cache)
    check_shape("dk", dk, k.shape, "dk has k's shape")
    check_shape("dalpha", dalpha, alpha.shape,
                "one value per head: sum over every axis of k but the head's (axis 1)")
    engine_dk, engine_dalpha = smear_backward(dout.copy(), smear_forward(k, alpha)[1])
    numeric_dk = finite_differences(lambda k_: smear(k_, alpha)[0], k, dout)
    numeric_dalpha = finite_differences(lambda a: smear(k, a)[0], alpha, dout)
    if not np.allclose(smeared, smear_forward(k, alpha)[0], rtol=1e-12):
        note = ("your smear_keys differs from the engine's (its check says how), and these "
                "finite differences are of yours: fix smear_keys first")
        check_close("dk", dk, numeric_dk, "finite differences", atol=1e-8, hint=note)
        check_close("dalpha", dalpha, numeric_dalpha, "finite differences", atol=1e-8, hint=note)
    swapped_dk = smear_backward(dout.copy(), smear_forward(k, -alpha)[1])[0]
    check_close("dk", dk, numeric_dk, "finite differences", atol=1e-8,
                hint=dk_mistake(dk, engine_dk, swapped_dk))
    check_close("dalpha", dalpha, numeric_dalpha, "finite differences", atol=1e-8,
                hint=dalpha_mistake(dalpha, engine_dalpha, sigmoid(alpha)))
    check_close("dk", dk, engine_dk, "minitransformer's smear_backward",
                hint=dk_mistake(dk, engine_dk, swapped_dk))
    check_close("dalpha", dalpha, engine_dalpha, "minitransformer's smear_backward",
                hint=dalpha_mistake(dalpha, engine_dalpha, sigmoid(alpha)))


def fail_unless_the_smear_passes_its_checks(what):
    """Run the forward and gradient checks above; if one fails, fail at once naming it, so
    that no model trains on a smear known to be wrong (a NotImplementedError goes through)."""
    for check in (test_forward_matches_the_engine,
                  test_backward_matches_finite_differences_and_the_engine):
        try:
            check()
        except pytest.fail.Exception as failure:
            fail(f"{what} not trained: your smear fails {check.__name__} first, and training "
                 f"on it would take half a minute to say less. Fix that: {failure.msg}")


def best_prefix_matching(run):
    return prefix_matching_score(run.model(), token_counts=run.token_counts).max()


@pytest.mark.checks("smear_keys_backward")
def test_a_one_layer_smeared_model_forms_an_induction_head(tmp_path):
    fail_unless_the_smear_passes_its_checks("the 1-layer smeared model")
    tokens = 500_000 if FAST else 800_000
    run = ex.train_one_layer(tmp_path / "smeared", smeared=True, total_tokens=tokens)
    best = best_prefix_matching(run)
    if not best > 0.8:
        fail(f"trained with your smear for {tokens:,} tokens, the 1-layer model's best "
             f"prefix-matching score is {best:.2f}; with the engine's it passes 0.9 by 450k "
             f"tokens. Your smear passes its checks on small inputs: does it depend on their "
             f"sizes (n_heads 2, d_head 64, 64 positions in training)?")


@pytest.mark.checks("smear_keys_backward")
@pytest.mark.skipif(FAST, reason="EXERCISE_FAST: the 1-layer control's training is skipped")
def test_the_one_layer_control_does_not(tmp_path):
    fail_unless_the_smear_passes_its_checks("the 1-layer control")
    best = best_prefix_matching(ex.train_one_layer(tmp_path / "control", smeared=False))
    if not best < 0.2:
        fail(f"the 1-layer control without smeared keys should not form an induction head, "
             f"but its best prefix-matching score is {best:.2f}")
