"""Exercise 17's checks catch the typical mistakes, and say which: each mistake below is
applied to the reference solution (one function replaced by a wrong one), the exercise's
own checks (exercises/test_17_composition.py) are run on it, and they must fail with a
message that names the problem. A mistake the shapes rule out (a missing transpose of W_K
or W_V when d_head != d_model) must fail too, with the error saying which shapes clash."""

import numpy as np
import pytest

import exercises.test_17_composition as checks
from circuits import FactoredMatrix
from exercises.solutions import ex17_composition as solution
import mistakes  # noqa: E402  (tests/mistakes.py)

frobenius = np.linalg.norm


with_mistake, failure_of = mistakes.bound(checks, solution)


def test_the_solution_passes(monkeypatch):
    """Without a mistake every check passes, so each failure below is the mistake's."""
    monkeypatch.setattr(checks, "ex", with_mistake())
    for case in ("square", "non-square"):
        checks.test_composition_score_equals_the_dense_formula(case)
    for name, test in vars(checks).items():
        if name.startswith("test_") and name != "test_composition_score_equals_the_dense_formula":
            test()


# ---- composition_score ---------------------------------------------------------------------

def dense(W):
    return W.A @ W.B


def score_without_denominator(W_A, W_B):
    return float(frobenius(dense(W_A) @ dense(W_B)))


def score_with_one_norm(W_A, W_B):
    return float(frobenius(dense(W_A) @ dense(W_B)) / frobenius(dense(W_A)))


def score_squared(W_A, W_B):
    return solution.composition_score(W_A, W_B) ** 2


def score_spectral(W_A, W_B):
    A, B = dense(W_A), dense(W_B)
    return float(np.linalg.norm(A @ B, 2) / (np.linalg.norm(A, 2) * np.linalg.norm(B, 2)))


def score_in_the_wrong_order(W_A, W_B):
    return solution.composition_score(W_B, W_A)


def score_with_a_transposed_writer(W_A, W_B):
    return solution.composition_score(W_A.T, W_B)


@pytest.mark.parametrize("mistake, named", [
    (score_without_denominator, "the denominator is missing"),
    (score_with_one_norm, "missing ||W_B||_F"),
    (score_squared, "score squared"),
    (score_spectral, "spectral norms"),
    (score_in_the_wrong_order, "wrong order"),
    (score_with_a_transposed_writer, "W_A is transposed")])
def test_composition_score_mistakes_are_named(monkeypatch, mistake, named):
    message = failure_of(monkeypatch, lambda: checks.
                         test_composition_score_equals_the_dense_formula("square"),
                         composition_score=mistake)
    assert named in message, message


def test_a_wrong_gram_matrix_fails_on_non_square_shapes(monkeypatch):
    """L L^T in place of L^T L: square matrices let it through as a wrong number; the
    non-square case makes it an error."""
    def wrong_gram(W_A, W_B):
        def norm(left, right):
            return np.sqrt(max(np.trace((left @ left.T) @ (right.T @ right)), 0.0))
        return float(norm(W_A.A, W_A.B @ W_B.A @ W_B.B)
                     / (norm(W_A.A, W_A.B) * norm(W_B.A, W_B.B)))
    monkeypatch.setattr(checks, "ex", with_mistake(composition_score=wrong_gram))
    with pytest.raises(ValueError, match="mismatch"):
        checks.test_composition_score_equals_the_dense_formula("non-square")
    message = failure_of(monkeypatch, lambda: checks.
                         test_composition_score_equals_the_dense_formula("square"),
                         composition_score=wrong_gram)
    assert "composition_score of W_A (20 x 20" in message, message


# ---- Q-, K-, V-composition of one pair ----------------------------------------------------

def factors(model, layer, head):
    W_Q, W_K, W_V, W_O = solution.head_weights(model, layer, head)
    ov, qk = FactoredMatrix(W_V, W_O), FactoredMatrix(W_Q, W_K.T)
    return ov, {"Q": qk, "K": qk.T, "V": ov}


def composition(kind, writer="earlier", reader="later", order="right", transpose=None):
    """A kind's score with one thing wrong: who writes and who reads ("earlier" l1.h1,
    "later" l2.h2, "crossed-earlier" l1.h2, "crossed-later" l2.h1), the order of the
    product, or a transpose."""
    def wrong(model, l1, h1, l2, h2):
        heads = {"earlier": (l1, h1), "later": (l2, h2), "crossed-earlier": (l1, h2),
                 "crossed-later": (l2, h1)}
        ov, _ = factors(model, *heads[writer])
        read = factors(model, *heads[reader])[1][kind]
        ov = ov.T if transpose == "writer" else ov
        read = read.T if transpose == "reader" else read
        return solution.composition_score(*((ov, read) if order == "right" else (read, ov)))
    return wrong


def test_missing_transposes_that_shapes_rule_out(monkeypatch):
    """d_head != d_model: W_Q times W_K (not W_K^T), or W_O W_V, cannot even be formed."""
    def qk_without_transpose(model, l1, h1, l2, h2):
        _, _, V1, O1 = solution.head_weights(model, l1, h1)
        Q2, K2, _, _ = solution.head_weights(model, l2, h2)
        return solution.composition_score(FactoredMatrix(V1, O1), FactoredMatrix(Q2, K2))

    def ov_the_wrong_way_round(model, l1, h1, l2, h2):
        _, _, V1, O1 = solution.head_weights(model, l1, h1)
        _, _, V2, O2 = solution.head_weights(model, l2, h2)
        return solution.composition_score(FactoredMatrix(V1, O1), FactoredMatrix(O2, V2))
    monkeypatch.setattr(checks, "ex", with_mistake(k_composition=qk_without_transpose,
                                                   v_composition=ov_the_wrong_way_round))
    with pytest.raises(ValueError, match="do not multiply"):
        checks.test_k_composition_matches_the_library()
    with pytest.raises(ValueError, match="mismatch"):
        checks.test_v_composition_matches_the_library()


TESTS = {kind: f"test_{kind.lower()}_composition_matches_the_library" for kind in "QKV"}
PAIR_MISTAKES = [
    ("Q", dict(kind="K"), "that is the K-composition score"),
    ("K", dict(kind="Q"), "Q and K are swapped or a transpose is missing"),
    ("K", dict(kind="V"), "that is the V-composition score"),
    ("V", dict(kind="Q"), "that is the Q-composition score"),
    ("Q", dict(order="wrong"), "wrong order"),
    ("K", dict(order="wrong"), "wrong order"),
    ("V", dict(order="wrong"), "wrong order"),
    ("Q", dict(transpose="writer"), "W_OV of head 0.1 is transposed"),
    ("V", dict(transpose="writer"), "W_OV of head 0.1 is transposed"),
    ("V", dict(transpose="reader"), "the later head's matrix is transposed"),
    ("K", dict(writer="later", reader="earlier"), "the roles are swapped"),
    ("Q", dict(writer="crossed-earlier", reader="crossed-later"), "the heads are crossed"),
    ("K", dict(writer="later"), "compares head 1.0 with itself"),
    ("V", dict(reader="earlier"), "compares head 0.1 with itself")]


@pytest.mark.parametrize("kind, mistake, named", PAIR_MISTAKES)
def test_pair_mistakes_are_named(monkeypatch, kind, mistake, named):
    wrong = composition(**{"kind": kind, **mistake})
    message = failure_of(monkeypatch, getattr(checks, TESTS[kind]),
                         **{f"{kind.lower()}_composition": wrong})
    assert named in message, message


def test_a_pair_score_without_the_denominator_is_named(monkeypatch):
    def unnormalised(model, l1, h1, l2, h2):
        ov, _ = factors(model, l1, h1)
        return float(frobenius(dense(ov) @ dense(factors(model, l2, h2)[1]["V"])))
    message = failure_of(monkeypatch, checks.test_v_composition_matches_the_library,
                         v_composition=unnormalised)
    assert "the denominator is missing" in message, message


# ---- the table -----------------------------------------------------------------------------

def table_over(pairs_of_layers, fill=np.nan, order="right", swap=None):
    """composition_table over the layer pairs pairs_of_layers(L) -> [(l1, l2)], `fill`
    elsewhere; order "earlier-first" indexes [l1, h1, l2, h2]; swap: two kinds' tables
    exchanged."""
    def table(model):
        L, H = model.config.n_layers, model.config.n_heads
        score = {"Q": solution.q_composition, "K": solution.k_composition,
                 "V": solution.v_composition}
        out = {kind: np.full((L, H, L, H), fill) for kind in "QKV"}
        for l1, l2 in pairs_of_layers(L):
            for h1 in range(H):
                for h2 in range(H):
                    for kind, composition_of in score.items():
                        index = (l2, h2, l1, h1) if order == "right" else (l1, h1, l2, h2)
                        out[kind][index] = composition_of(model, l1, h1, l2, h2)
        if swap:
            out[swap[0]], out[swap[1]] = out[swap[1]], out[swap[0]]
        return out
    return table


EARLIER = lambda L: [(l1, l2) for l2 in range(L) for l1 in range(l2)]
TABLE_MISTAKES = [
    (table_over(lambda L: [(l1, l2) for l1 in range(L) for l2 in range(L)]),
     "a head with itself (e.g. entry (0, 0, 0, 0): head 0.0 reading head 0.0"),
    (table_over(lambda L: [(l1, l2) for l1 in range(L) for l2 in range(L)]),
     "a head with a head of a later layer"),
    (table_over(lambda L: EARLIER(L) + [(l, l) for l in range(L)]), "two heads of the same layer"),
    (table_over(lambda L: [(l1, l2) for l1 in range(L) for l2 in range(L) if l1 != l2]),
     "a head with a head of a later layer"),
    (table_over(EARLIER, fill=0.0), "leave those entries NaN"),
    (table_over(lambda L: [(l2 - 1, l2) for l2 in range(1, L)]), "2 layers apart"),
    (table_over(EARLIER, order="earlier-first"), "indexed [earlier layer, earlier head"),
    (table_over(EARLIER, swap=("Q", "K")), "the K-composition table under the key 'Q'")]


@pytest.mark.parametrize("mistake, named", TABLE_MISTAKES)
def test_table_mistakes_are_named(monkeypatch, mistake, named):
    message = failure_of(monkeypatch, checks.test_composition_table_matches_the_library,
                         composition_table=mistake)
    assert named in message, message


def test_crossed_heads_in_the_table_are_named(monkeypatch):
    def crossed(model):
        table = solution.composition_table(model)
        return {kind: t.transpose(0, 3, 2, 1) for kind, t in table.items()}
    message = failure_of(monkeypatch, checks.test_composition_table_matches_the_library,
                         composition_table=crossed)
    assert "the heads are crossed" in message, message
