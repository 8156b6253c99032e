"""Exercise 09's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is a reference function with one thing wrong; the exercise's own checks
(exercises/test_09_positional_qk.py) are run on it and must fail with a message that names
the problem. A missing transpose must fail too: the check's shapes (P 12, d_head 5; P 20,
d_head 30) make it an error that the check names, where the trained model (P = d_head = 64)
would let it run. The mistaken variants are near copies of the solution: they live here."""
import numpy as np
import pytest

import exercises.test_09_positional_qk as checks
from exercises.solutions import ex09_positional_qk as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


with_mistake, failure_of = mistakes.bound(checks, solution)


def scores(form="right", scale="sqrt d_head", embedding="pos_embed.W_pos", layer_of=None):
    """positional_qk_scores with the product formed otherwise, another scale, another
    embedding or a fixed layer."""
    def positional_qk_scores(model, layer):
        p = {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
        a = f"blocks.{layer if layer_of is None else layer_of}.attn."
        W, W_Q, W_K = p[embedding], p[a + "W_Q"], p[a + "W_K"]
        q = np.einsum("pd,hde->hpe", W, W_Q)
        k = np.einsum("pd,hde->hpe", W, W_K)
        if form == "right":
            out = q @ k.transpose(0, 2, 1)
        elif form == "no transpose":
            out = q @ k
        elif form == "swapped":
            out = k @ q.transpose(0, 2, 1)
        elif form == "W_K untransposed":
            out = np.stack([W @ W_Q[h] @ W_K[h] @ W.T for h in range(len(W_Q))])
        elif form == "keys contracted":                  # (H, E, E): a sum over positions
            out = q.transpose(0, 2, 1) @ k
        elif form == "biases":
            out = ((q + p[a + "b_Q"][:, None]) @ (k + p[a + "b_K"][:, None]).transpose(0, 2, 1))
        E, D = model.config.d_head, model.config.d_model
        return out / {"sqrt d_head": np.sqrt(E), "none": 1.0, "d_head": E,
                      "sqrt d_model": np.sqrt(D)}[scale]
    return positional_qk_scores


def pattern(mask=1, axis=-1, subtract_max=True, mask_after=False):
    """positional_pattern with the mask from diagonal `mask`, the softmax over `axis`, no max
    subtracted, or the mask applied after the softmax (as zeros)."""
    def positional_pattern(scores):
        P = scores.shape[-1]
        if mask_after:
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights = weights / weights.sum(-1, keepdims=True)
            return weights * np.tril(np.ones((P, P)))
        masked = scores + np.triu(np.full((P, P), -np.inf), k=mask)
        with np.errstate(over="ignore", invalid="ignore"):     # the mistakes' NaN is the point
            if subtract_max:
                masked = masked - masked.max(axis, keepdims=True)
            weights = np.exp(masked)
            return weights / weights.sum(axis, keepdims=True)
    return positional_pattern


def share(offset=-1, over=None):
    def previous_token_share(pattern):
        d = np.diagonal(pattern, offset, axis1=-2, axis2=-1)
        return d.mean(-1) if over is None else d.sum(-1) / over(pattern)
    return previous_token_share


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    for layer in (0, 1):
        checks.test_scores_match_the_library(layer)
    checks.test_scores_on_the_hand_built_model()
    for size in ("moderate", "large"):
        checks.test_causal_softmax(size)
    checks.test_previous_token_share()
    checks.test_the_hand_built_previous_token_head()


@pytest.mark.parametrize("mistake, says", [
    (scores(form="no transpose"), ["raised ValueError", "(P, D) = (12, 24)",
                                   "Is a transpose missing or misplaced?"]),
    (scores(form="W_K untransposed"), ["raised ValueError", "transpose missing"]),
    (scores(form="swapped"), ["query and key are swapped"]),
    (scores(form="keys contracted"), ["shape (3, 5, 5)", "it must be over d_head (5)"]),
    (scores(scale="none"), ["not divided by sqrt(d_head)"]),
    (scores(scale="d_head"), ["divided by d_head"]),
    (scores(scale="sqrt d_model"), ["the scale is sqrt(d_model)"]),
    (scores(embedding="embed.W_E"), ["shape (3, 30, 30)", "W_E is used"]),
    (scores(layer_of=0), ["layer 0's scores", "use the `layer` given"]),
    (scores(form="biases"), ["differs from circuits.full_qk_circuit", "leave b_Q and b_K out"]),
], ids=["no transpose", "W_K untransposed", "swapped", "keys contracted", "no scale",
        "d_head", "sqrt d_model", "W_E", "layer 0", "biases"])
def test_score_mistakes_are_named(monkeypatch, mistake, says):
    layer = 1                                      # layer 0 hides the fixed-layer mistake
    message = failure_of(monkeypatch, checks.test_scores_match_the_library, layer,
                         positional_qk_scores=mistake)
    for phrase in says:
        assert phrase in message, message


def test_a_missing_transpose_would_run_where_P_equals_d_head(monkeypatch):
    """Why the check's sizes differ: with P = d_head (the trained model: 64 and 64) the
    missing transpose runs and gives a wrong square matrix; on the check's models it fails."""
    from circuits import induction_model
    model = induction_model(d_vocab=16, n_ctx=24)           # P = d_head = 24
    wrong = scores(form="no transpose")(model, 0)
    assert wrong.shape == (1, 24, 24)
    assert not np.allclose(wrong, solution.positional_qk_scores(model, 0))
    message = failure_of(monkeypatch, checks.test_scores_on_the_hand_built_model,
                         positional_qk_scores=scores(form="no transpose"))
    assert "(P, D) = (20, 110)" in message and "transpose" in message, message


@pytest.mark.parametrize("mistake, size, says", [
    (pattern(mask=2), "moderate", ["attention on a later key", "keys j > i must get none"]),
    (pattern(mask=0), "moderate", ["NaN in row 0", "Is the diagonal masked too?"]),
    (pattern(axis=-2), "moderate", ["each row, a query's weights over its keys, must sum to 1",
                                    "normalised over the keys (the last axis)"]),
    (pattern(mask_after=True), "moderate", ["must sum to 1", "mask applied before the "
                                                             "softmax"]),
    (pattern(subtract_max=False), "large", ["NaN", "exp overflowed"]),
], ids=["mask one off", "diagonal masked", "softmax over queries", "mask after", "overflow"])
def test_pattern_mistakes_are_named(monkeypatch, mistake, size, says):
    message = failure_of(monkeypatch, checks.test_causal_softmax, size,
                         positional_pattern=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("mistake, says", [
    (share(offset=0), ["the main diagonal"]),
    (share(offset=1), ["i -> i + 1, a later key"]),
    (share(over=lambda pattern: pattern.shape[-1]), ["only the P - 1 queries i >= 1"]),
    (share(over=lambda pattern: 1), ["previous_token_share: yours differs"]),
], ids=["main diagonal", "next key", "over P", "a sum"])
def test_share_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_previous_token_share,
                         previous_token_share=mistake)
    for phrase in says:
        assert phrase in message, message
