"""Exercise 09: the positional QK circuit against circuits.full_qk_circuit, its causal softmax
against the engine's (minitransformer.ops.attention.softmax_forward), and the previous-token
share (known on the hand-built previous-token head). A failure names the quantity, the worst
entry and, where it can tell, the mistake.

Every size differs (3 heads, 12 positions, d_head 5, d_model 24; the hand-built model has 20
positions and d_head 30), so that a missing transpose is an error or a wrong number, never a
right one by luck, as it would be with P = d_head (the trained model has 64 of each).

For the teacher: softmax_forward is positional_pattern's answer in the engine."""
import numpy as np
import pytest

from circuits import full_qk_circuit, induction_model
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model
from minitransformer.ops.attention import softmax_forward

ex = load("ex09_positional_qk")

H, P, E, D, V = 3, 12, 5, 24, 30


def model_with_layernorm():
    model = Model(dict(n_layers=2, d_model=D, n_heads=H, d_head=E, n_ctx=P, d_vocab=V,
                       attn_only=True, normalization_type="LN"), seed=6, dtype=np.float64)
    rng = np.random.default_rng(9)
    for name, value in model.params.items():
        if ".attn.b_" in name:            # zero at init: the positional part leaves them out
            model.params[name] = rng.normal(0.0, 0.5, value.shape)
    return model


def scores_of(model, layer, shapes):
    """The student's positional_qk_scores; an error from shapes that do not chain is named."""
    try:
        return ex.positional_qk_scores(model, layer)
    except ValueError as error:
        if not any(word in str(error) for word in ("mismatch", "shapes", "broadcast",
                                                    "operand")):
            raise
        fail(f"positional_qk_scores raised ValueError ({error}) with {shapes}: two factors "
             f"whose shapes do not chain. Is a transpose missing or misplaced? scores[h, i, j] "
             f"is position i's query vector dotted with position j's key vector, over d_head")


@pytest.mark.checks("positional_qk_scores")
@pytest.mark.parametrize("layer", [0, 1])
def test_scores_match_the_library(layer):
    model = model_with_layernorm()
    shapes = f"W_pos (P, D) = ({P}, {D}) and W_Q, W_K (H, D, E) = ({H}, {D}, {E})"
    scores = scores_of(model, layer, shapes)
    hint = "[head, query position, key position]"
    if np.shape(scores) == (H, V, V):
        hint = "(H, V, V): the token embedding W_E is used, not the positions' W_pos"
    elif np.shape(scores) == (H, E, E):
        hint = f"(H, E, E): the product is over positions; it must be over d_head ({E})"
    check_shape(f"positional_qk_scores (layer {layer})", scores, (H, P, P), hint)
    expected = full_qk_circuit(model, layer, "pos", "pos").AB / np.sqrt(E)
    other = full_qk_circuit(model, 1 - layer, "pos", "pos").AB / np.sqrt(E)
    check_close(f"positional QK scores (layer {layer})", scores, expected,
                "circuits.full_qk_circuit(model, layer, 'pos', 'pos') / sqrt(d_head)",
                rtol=1e-8, atol=1e-10,
                mistakes={"the scores are not divided by sqrt(d_head), as attention scores are":
                          expected * np.sqrt(E),
                          "the scores are divided by d_head; attention scores are divided by "
                          "sqrt(d_head)": expected / np.sqrt(E),
                          "the scale is sqrt(d_model); attention scores are divided by "
                          "sqrt(d_head)": expected * np.sqrt(E) / np.sqrt(D),
                          "query and key are swapped: rows are query positions, columns key "
                          "positions (the transpose of yours)": expected.transpose(0, 2, 1),
                          f"these are layer {1 - layer}'s scores: use the `layer` given":
                          other},
                hint="the positional part has no biases: leave b_Q and b_K out")


@pytest.mark.checks("positional_qk_scores")
def test_scores_on_the_hand_built_model():
    """20 positions, d_head 30, d_model 110: P, E and D differ the other way round."""
    model = induction_model(d_vocab=30, n_ctx=20)
    shapes = "W_pos (P, D) = (20, 110) and W_Q, W_K (H, D, E) = (1, 110, 30)"
    scores = scores_of(model, 0, shapes)
    check_shape("positional_qk_scores (hand-built model)", scores, (1, 20, 20),
                "[head, query position, key position]")
    check_close("positional QK scores (hand-built model)", scores,
                full_qk_circuit(model, 0, "pos", "pos").AB / np.sqrt(30),
                "circuits.full_qk_circuit(model, 0, 'pos', 'pos') / sqrt(d_head)",
                rtol=1e-8, atol=1e-10)


@pytest.mark.checks("positional_pattern")
@pytest.mark.parametrize("size", ["moderate", "large"])
def test_causal_softmax(size):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(H, 7, 7)) * (3.0 if size == "moderate" else 400.0)
    pattern = np.asarray(ex.positional_pattern(scores.copy()), dtype=np.float64)
    check_shape("positional_pattern", pattern, scores.shape)
    if np.isnan(pattern).any():
        nan_rows = np.isnan(pattern).any(-1)                      # (H, P)
        if nan_rows[:, 0].all() and not nan_rows[:, 1:].any():
            fail("positional_pattern is NaN in row 0 (query 0) of every head: that row has no "
                 "key left. Is the diagonal masked too? A query may attend to itself (j = i)")
        h, i = np.argwhere(nan_rows)[0]
        fail(f"positional_pattern is NaN at head {h}, query {i} ({size} scores)"
             + (": exp overflowed on large scores (inf / inf). The softmax of a row does not "
                "change when the same number is subtracted from all its scores"
                if size == "large" else ""))
    later = np.abs(np.nan_to_num(np.triu(pattern, k=1), nan=0.0))
    if later.max() > 0:
        h, i, j = np.unravel_index(np.argmax(later), later.shape)
        fail(f"positional_pattern puts attention on a later key: head {h}, query {i}, key {j} "
             f"gets {pattern[h, i, j]:.3g}; keys j > i must get none")
    expected = softmax_forward(scores.copy())
    rows = pattern.sum(-1)
    check_close(f"positional_pattern ({size} scores)", pattern, expected,
                "the engine's causal softmax", rtol=1e-9, atol=1e-12,
                hint="" if np.allclose(rows, 1.0) else
                f"each row, a query's weights over its keys, must sum to 1; yours sum to "
                f"{rows.min():.3g} to {rows.max():.3g}: is the mask applied before the softmax, "
                f"and the softmax normalised over the keys (the last axis)?")


def share_by_definition(pattern):
    return [np.mean([pattern[h, i, i - 1] for i in range(1, pattern.shape[-1])])
            for h in range(len(pattern))]


@pytest.mark.checks("previous_token_share")
def test_previous_token_share():
    pattern = np.random.default_rng(1).random((H, 7, 7))
    share = ex.previous_token_share(pattern)
    check_shape("previous_token_share", share, (H,), "one value per head")
    expected = share_by_definition(pattern)
    diagonals = {offset: np.diagonal(pattern, offset, axis1=-2, axis2=-1)
                 for offset in (0, 1, -1)}
    check_close("previous_token_share", share, expected,
                "the mean of pattern[h, i, i - 1] over i >= 1", rtol=1e-9,
                mistakes={"that is the main diagonal (i -> i); the previous token is i -> i - 1":
                          diagonals[0].mean(-1),
                          "that is i -> i + 1, a later key; the previous token is i -> i - 1":
                          diagonals[1].mean(-1),
                          "the mean is over P queries; only the P - 1 queries i >= 1 have a "
                          "previous token": diagonals[-1].sum(-1) / 7})


@pytest.mark.checks("previous_token_share")
def test_the_hand_built_previous_token_head():
    model = induction_model(d_vocab=30, n_ctx=20)
    share = ex.previous_token_share(ex.positional_pattern(
        scores_of(model, 0, "W_pos (20, 110) and W_Q, W_K (1, 110, 30)")))
    if not share[0] > 0.95:
        fail(f"head 0.0 of the hand-built model points every query at i - 1 by positions "
             f"alone; your share is {share[0]:.2f}")
