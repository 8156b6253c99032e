"""Exercise 10's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is a reference function with one thing wrong; the exercise's own checks
(exercises/test_10_k_composition.py) are run on it and must fail with a message that names
the problem. The mistaken variants are near copies of the solution: they live here, not in
the students' tests."""
import numpy as np
import pytest

import exercises.test_10_k_composition as checks
from circuits import prev_token_qk_trace
from exercises.solutions import ex10_k_composition as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


with_mistake, failure_of = mistakes.bound(checks, solution)


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    for later, earlier in [(1, 0), (2, 0), (2, 1)]:
        checks.test_k_composition_matches_the_library(later, earlier)
    checks.test_the_hand_built_induction_head_reads_the_previous_token_head()
    for layer, head in [(1, 0), (1, 2), (2, 1)]:
        checks.test_trace_matches_the_library(layer, head)
    checks.test_the_hand_built_induction_head_has_a_positive_trace()


def test_the_checks_trace_helper_is_the_engine():
    """engine_trace (the 2-layer model holding the earlier heads) gives the engine's own trace
    when every earlier layer counts: the mistakes it computes differ from it in one thing."""
    model = checks.random_model()
    trace, normalised = prev_token_qk_trace(model, checks.PREVIOUS)
    for layer, head in [(1, 0), (2, 1)]:
        np.testing.assert_allclose(checks.engine_trace(model, layer, head, checks.PREVIOUS),
                                   (trace[layer, head], normalised[layer, head]), rtol=1e-10)


# ---- k_composition_scores --------------------------------------------------------------------

def k_scores(form="right", normalise="both"):
    def k_composition_scores(model, later, earlier):
        ov, qk = solution.ov_matrices(model, earlier), solution.qk_matrices(model, later)
        T = lambda m: m.transpose(0, 2, 1)
        norm = lambda m: np.linalg.norm(m, axis=(-2, -1))
        if form == "crossed roles":
            ov, qk = solution.ov_matrices(model, later), solution.qk_matrices(model, earlier)
        if form == "V-composition":                   # the later head's W_OV in W_QK's place
            qk = solution.ov_matrices(model, later)
        product = {"right": lambda: ov[None] @ T(qk)[:, None],
                   "crossed roles": lambda: ov[None] @ T(qk)[:, None],
                   "Q-composition": lambda: ov[None] @ qk[:, None],
                   "V-composition": lambda: ov[None] @ qk[:, None],
                   "OV transposed": lambda: T(ov)[None] @ T(qk)[:, None],
                   "order reversed": lambda: T(qk)[:, None] @ ov[None],
                   "rows a": lambda: ov[:, None] @ T(qk)[None]}[form]()
        if form == "rows a":
            return norm(product) / (norm(ov)[:, None] * norm(qk)[None, :])
        return norm(product) / {"both": lambda: norm(qk)[:, None] * norm(ov)[None, :],
                                "none": lambda: 1.0,
                                "no qk": lambda: norm(ov)[None, :],
                                "no ov": lambda: norm(qk)[:, None],
                                "crossed": lambda: norm(qk)[None, :] * norm(ov)[:, None]}[
                                    normalise]()
    return k_composition_scores


@pytest.mark.parametrize("mistake, says", [
    (k_scores("Q-composition"), ["that is Q-composition", "through the transpose of W_QK^b"]),
    (k_scores("V-composition"), ["that is V-composition"]),
    (k_scores("OV transposed"), ["W_OV^a is transposed, or the product is in the wrong order"]),
    (k_scores("order reversed"), ["the product is in the wrong order"]),
    (k_scores("rows a"), ["rows and columns are swapped"]),
    (k_scores("crossed roles"), ["the roles are swapped"]),
    (k_scores(normalise="none"), ["the denominator is missing: divide by both norms"]),
    (k_scores(normalise="no qk"), ["the denominator is missing ||W_QK^b||_F"]),
    (k_scores(normalise="no ov"), ["the denominator is missing ||W_OV^a||_F"]),
    (k_scores(normalise="crossed"), ["the norms in the denominator are paired the wrong way"]),
], ids=["Q-composition", "V-composition", "OV transposed", "order reversed", "rows a",
        "roles swapped", "no denominator", "no QK norm", "no OV norm", "norms crossed"])
def test_k_composition_mistakes_are_named(monkeypatch, mistake, says):
    for later, earlier in [(2, 1), (2, 0)]:
        message = failure_of(monkeypatch, checks.test_k_composition_matches_the_library,
                             later, earlier, k_composition_scores=mistake)
        for phrase in says:
            assert phrase in message, message


def test_the_order_mistake_is_an_error_or_a_wrong_number_not_a_right_one():
    """With square D x D matrices a wrong order runs: only its value shows it, which the
    scaled heads make distinct from every other mistake's."""
    model = checks.random_model()
    values = list(checks.k_mistakes(model, 2, 1).values())
    for i, first in enumerate(values):
        for second in values[i + 1:]:
            assert not np.allclose(first, second, rtol=1e-6)


# ---- prev_token_trace ------------------------------------------------------------------------

def trace(weights="p", layers=lambda layer: range(layer), ov="transposed", qk="right",
          embed=True, diagonal=True, norm="W", head_of=None):
    def prev_token_trace(model, layer, head, previous_token_scores):
        p = solution._params(model)
        h = head if head_of is None else head_of
        W_E, a = p["embed.W_E"], f"blocks.{layer}.attn."
        w = {"p": previous_token_scores, "ones": np.ones_like(previous_token_scores),
             "p.T": previous_token_scores.T}[weights]
        spec = "h,hde->ed" if ov == "transposed" else "h,hde->de"
        S = sum(np.einsum(spec, w[k], solution.ov_matrices(model, k)) for k in layers(layer))
        W_Q, W_K = p[a + "W_Q"][h], p[a + "W_K"][h]
        if qk == "swapped":
            W_Q, W_K = W_K, W_Q
        if not embed:
            W_E = np.eye(W_E.shape[1])
        left, right = W_E @ W_Q, W_K.T @ S @ W_E.T
        W = left @ right
        t = float(np.trace(W)) if diagonal else float(W.sum())
        n = {"W": np.linalg.norm(W), "squared": np.linalg.norm(W) ** 2,
             "factors": np.linalg.norm(left) * np.linalg.norm(right)}[norm]
        return t, t / float(n)
    return prev_token_trace


@pytest.mark.parametrize("mistake, says", [
    (trace(weights="ones"), ["not weighted by their previous-token scores"]),
    (trace(weights="p.T"), ["p is indexed [layer, head]"]),
    (trace(ov="untransposed"), ["W_OV^k enters untransposed"]),
    (trace(qk="swapped"), ["the query side and the key side are swapped"]),
    (trace(layers=lambda layer: range(layer + 1)), ["the heads of layer 2 itself count"]),
    (trace(layers=lambda layer: [layer - 1]), ["only layer 1's heads count"]),
    (trace(layers=lambda layer: [0]), ["only layer 0's heads count"]),
    (trace(embed=False), ["without the embeddings"]),
    (trace(head_of=0), ["these are head 2.0's: use the `head` given"]),
    (trace(diagonal=False), ["trace of W for head 2.1: yours differs from "
                             "circuits.prev_token_qk_trace", "the sum of W's diagonal"]),
    (trace(norm="squared"), ["normalised trace for head 2.1", "the trace is right",
                             "||W||_F squared"]),
    (trace(norm="factors"), ["normalised trace for head 2.1", "the trace is right",
                             "not of one of its factors"]),
], ids=["unweighted", "p transposed", "W_OV untransposed", "Q and K swapped", "own layer",
        "layer below only", "layer 0 only", "no embeddings", "head 0", "sum of entries",
        "norm squared", "factors' norms"])
def test_trace_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_trace_matches_the_library, 2, 1,
                         prev_token_trace=mistake)
    for phrase in says:
        assert phrase in message, message


def test_a_trace_without_a_tuple_is_named(monkeypatch):
    message = failure_of(monkeypatch, checks.test_trace_matches_the_library, 1, 0,
                         prev_token_trace=lambda *args: trace()(*args)[0])
    assert "should return two numbers" in message, message
