"""Exercise 10: K-composition scores against circuits.composition_scores, and the
previous-token QK trace against circuits.prev_token_qk_trace."""
import numpy as np
import pytest

from circuits import composition_scores, induction_model, prev_token_qk_trace
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex10_k_composition")


def random_model():
    return Model(dict(n_layers=3, d_model=24, n_heads=2, d_head=6, n_ctx=16, d_vocab=30,
                      attn_only=True, normalization_type=None), seed=7, dtype=np.float64)


@pytest.mark.checks("k_composition_scores")
def test_k_composition_matches_the_library():
    model = random_model()
    library = composition_scores(model)
    for later, earlier in [(1, 0), (2, 0), (2, 1)]:
        yours = ex.k_composition_scores(model, later, earlier)
        Q, K, V = (library[kind][later, :, earlier, :] for kind in "QKV")
        check_shape(f"k_composition_scores({later}, {earlier})", yours, (2, 2),
                    "[later head b, earlier head a]")
        check_close(f"K-composition of layer {later} with layer {earlier}", yours,
                    K, "circuits.composition_scores(model)['K']", rtol=1e-8,
                    mistakes={"that is Q-composition (W_OV^a W_QK^b): the keys read through "
                              "the transpose, W_OV^a (W_QK^b)^T": Q,
                              "that is V-composition (W_OV^a W_OV^b)": V,
                              "rows are the later head b, columns the earlier head a": K.T})


@pytest.mark.checks("prev_token_trace")
def test_trace_matches_the_library():
    model = random_model()
    previous = np.random.default_rng(0).uniform(0, 1, (3, 2))
    trace, normalised = prev_token_qk_trace(model, previous)
    for layer, head in [(1, 0), (1, 1), (2, 1)]:
        yours = ex.prev_token_trace(model, layer, head, previous)
        if len(yours) != 2:
            fail("prev_token_trace should return two numbers: (trace, trace / ||W||_F)")
        check_close(f"trace of W for head {layer}.{head}", yours[0], trace[layer, head],
                    "circuits.prev_token_qk_trace", rtol=1e-7,
                    hint="W = sum over heads k of ALL earlier layers of p_k W_E W_Q W_K^T "
                         "(W_OV^k)^T W_E^T; mind the transpose of W_OV^k")
        check_close(f"normalised trace for head {layer}.{head}", yours[1],
                    normalised[layer, head], "circuits.prev_token_qk_trace", rtol=1e-7,
                    hint="divide the trace by the Frobenius norm of the whole V x V W")


@pytest.mark.checks("prev_token_trace")
def test_the_hand_built_induction_head_has_a_positive_trace():
    model = induction_model(d_vocab=16, n_ctx=24)
    trace, normalised = ex.prev_token_trace(model, 1, 0, np.array([[1.0], [0.0]]))
    if not (trace > 0 and normalised > 0.9 * np.sqrt(16)):
        fail(f"the hand-built head 1.0 matches the present token with the key's previous "
             f"token exactly (W is a multiple of the identity: normalised trace sqrt(V) = 4); "
             f"yours gives trace {trace:.3g}, normalised {normalised:.3g}")
