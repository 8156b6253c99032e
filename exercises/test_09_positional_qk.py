"""Exercise 09: the positional QK circuit against circuits.full_qk_circuit, its causal
softmax, and the previous-token share (known on the hand-built previous-token head)."""
import numpy as np
import pytest

from circuits import full_qk_circuit, induction_model
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex09_positional_qk")


def model_with_layernorm():
    return Model(dict(n_layers=2, d_model=24, n_heads=3, d_head=4, n_ctx=12, d_vocab=30,
                      attn_only=True, normalization_type="LN"), seed=6, dtype=np.float64)


@pytest.mark.checks("positional_qk_scores")
def test_scores_match_the_library():
    model = model_with_layernorm()
    for layer in range(2):
        scores = ex.positional_qk_scores(model, layer)
        check_shape(f"positional_qk_scores (layer {layer})", scores, (3, 12, 12),
                    "[head, query position, key position]")
        expected = full_qk_circuit(model, layer, "pos", "pos").AB / np.sqrt(4)
        check_close(f"positional QK scores (layer {layer})", scores, expected,
                    "circuits.full_qk_circuit(model, layer, 'pos', 'pos') / sqrt(d_head)",
                    rtol=1e-8, atol=1e-10,
                    mistakes={"divide by sqrt(d_head), as the attention scores are":
                              expected * 2.0,
                              "queries index the rows: W_pos W_Q (W_pos W_K)^T, not the transpose":
                              expected.transpose(0, 2, 1)})


@pytest.mark.checks("positional_pattern")
def test_causal_softmax():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 6, 6)) * 3
    pattern = ex.positional_pattern(scores)
    check_shape("positional_pattern", pattern, (2, 6, 6))
    if np.abs(np.triu(pattern, k=1)).max() > 0:
        fail("positional_pattern puts attention on later keys: mask j > i with -inf")
    expected = np.zeros_like(scores)
    for i in range(6):
        row = np.exp(scores[:, i, :i + 1] - scores[:, i, :i + 1].max(-1, keepdims=True))
        expected[:, i, :i + 1] = row / row.sum(-1, keepdims=True)
    check_close("positional_pattern", pattern, expected, "a row-by-row causal softmax",
                rtol=1e-9, atol=1e-12)


@pytest.mark.checks("previous_token_share")
def test_previous_token_share():
    rng = np.random.default_rng(1)
    pattern = rng.random((2, 7, 7))
    check_close("previous_token_share", ex.previous_token_share(pattern),
                [np.mean([pattern[h, i, i - 1] for i in range(1, 7)]) for h in range(2)],
                "the mean of pattern[h, i, i - 1] over i >= 1", rtol=1e-9,
                mistakes={"that is the main diagonal (i -> i); the previous token is i -> i - 1":
                          np.diagonal(pattern, 0, axis1=-2, axis2=-1).mean(-1)})


@pytest.mark.checks("previous_token_share")
def test_the_hand_built_previous_token_head():
    model = induction_model(d_vocab=16, n_ctx=24)
    share = ex.previous_token_share(ex.positional_pattern(ex.positional_qk_scores(model, 0)))
    if not share[0] > 0.95:
        fail(f"head 0.0 of the hand-built model points every query at i - 1 by positions "
             f"alone; your share is {share[0]:.2f}")
