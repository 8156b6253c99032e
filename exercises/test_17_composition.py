"""Exercise 17: composition_score against the dense formula, on non-square factors of distinct
norms and on rank-1 matrices whose score is known; each of Q-, K- and V-composition against
circuits.composition_scores on a 3-layer, 3-head model with d_head != d_model and weights of
distinct norms, pairs of different heads and a gap of two layers (where a swapped, crossed
or transposed matrix cannot give the same number), and on the hand-built induction model
(pure K-composition); the whole table, NaN where heads cannot compose."""
import numpy as np
import pytest

from circuits import FactoredMatrix, composition_scores, induction_model
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex17_composition")

frobenius = np.linalg.norm
PAIRS = [(0, 1, 1, 0), (0, 2, 2, 1), (1, 0, 2, 2)]     # (l1, h1, l2, h2): h1 != h2 always


def random_model():
    """3 layers, 3 heads, d_model 24, d_head 6; each head's W_Q, W_K, W_V, W_O scaled by its
    own factor in [0.3, 3], so no two matrices have the same norm."""
    model = Model(dict(n_layers=3, d_model=24, n_heads=3, d_head=6, n_ctx=16, d_vocab=30,
                       attn_only=True, normalization_type=None), seed=17, dtype=np.float64)
    scale = np.random.default_rng(1).uniform(0.3, 3.0, size=(3, 4, 3))  # layer, matrix, head
    for layer in range(3):
        for i, name in enumerate(("W_Q", "W_K", "W_V", "W_O")):
            key = f"blocks.{layer}.attn.{name}"
            model.params[key] = model.params[key] * scale[layer, i][:, None, None]
    return model


def dense_score(X, Y):
    return frobenius(X @ Y) / (frobenius(X) * frobenius(Y))


# ---- composition_score ----------------------------------------------------------------------

def factored(rng, rows, inner, columns, scale):
    return FactoredMatrix(scale * rng.standard_normal((rows, inner)),
                          rng.standard_normal((inner, columns)))


@pytest.mark.checks("composition_score")
@pytest.mark.parametrize("case", ["non-square", "square"])
def test_composition_score_equals_the_dense_formula(case):
    rng = np.random.default_rng(3)
    m, n, p = (7, 20, 11) if case == "non-square" else (20, 20, 20)
    W_A, W_B = factored(rng, m, 3, n, 3.0), factored(rng, n, 5, p, 0.2)   # ranks 3 and 5
    A, B = W_A.AB, W_B.AB
    spectral = lambda X: np.linalg.norm(X, 2)
    mistakes = {
        "the denominator is missing: divide by the norms of W_A and of W_B":
            frobenius(A @ B),
        "the denominator is missing ||W_B||_F": frobenius(A @ B) / frobenius(A),
        "the denominator is missing ||W_A||_F": frobenius(A @ B) / frobenius(B),
        "this is the score squared: a trace of Gram matrices gives a squared norm":
            dense_score(A, B) ** 2,
        "these are spectral norms (the largest singular value): the score uses Frobenius "
        "norms": spectral(A @ B) / (spectral(A) * spectral(B))}
    if case == "square":
        mistakes.update({
            "the product is in the wrong order: W_A acts first (x @ W_A @ W_B)":
                dense_score(B, A),
            "W_A is transposed": dense_score(A.T, B), "W_B is transposed": dense_score(A, B.T)})
    yours = ex.composition_score(W_A, W_B)
    check_shape(f"composition_score ({case})", yours, (), "one number for one pair")
    check_close(f"composition_score of W_A ({m} x {n}, rank 3) and W_B ({n} x {p}, rank 5)", yours,
                dense_score(A, B), "||W_A W_B||_F / (||W_A||_F ||W_B||_F) of the dense matrices",
                rtol=1e-8, mistakes=mistakes)


@pytest.mark.checks("composition_score")
def test_composition_score_of_rank_one_matrices():
    """W_A = 6 u v^T writes along u what it reads along v; W_B = 5 v w^T reads v: score 1,
    whatever the scales. A W_B that reads a direction orthogonal to u: score 0."""
    rng = np.random.default_rng(4)
    u, w = rng.standard_normal(9), rng.standard_normal(13)
    q, _ = np.linalg.qr(rng.standard_normal((12, 2)))
    v, v_orthogonal = q[:, 0], q[:, 1]                       # unit vectors, orthogonal
    u, w = u / frobenius(u), w / frobenius(w)
    W_A = FactoredMatrix(2 * u[:, None], 3 * v[None, :])      # (9, 12) = 6 u v^T, rank 1
    for reads, expected, what in ((v, 1.0, "exactly the one direction W_A writes"),
                                  (v_orthogonal, 0.0, "only a direction W_A never writes")):
        W_B = FactoredMatrix(5 * reads[:, None], w[None, :])  # (12, 13) = 5 reads w^T
        check_close(f"composition_score of W_A = 6 u v^T with a W_B (scale 5) that reads "
                    f"{what}", ex.composition_score(W_A, W_B), expected, "the known score",
                    rtol=1e-8, atol=1e-8,
                    hint="the score does not change when W_A or W_B is scaled: did you "
                         "divide by both norms?" if expected else "")


# ---- Q-, K- and V-composition of one pair ---------------------------------------------------

def circuits_of(model, layer, head):
    """Dense (W_OV, W_QK) of one head, (D, D) each."""
    p = {n: model.params[f"blocks.{layer}.attn.{n}"][head] for n in ("W_Q", "W_K", "W_V", "W_O")}
    return p["W_V"] @ p["W_O"], p["W_Q"] @ p["W_K"].T


def readers(model, layer, head):
    """What each kind of composition has the later head read with: {"Q", "K", "V": (D, D)}."""
    ov, qk = circuits_of(model, layer, head)
    return {"Q": qk, "K": qk.T, "V": ov}


SIDE = {"Q": "the queries", "K": "the keys", "V": "the values"}


def pair_mistakes(model, kind, l1, h1, l2, h2):
    """{what went wrong: the score it gives} for one pair of heads."""
    ov1, _ = circuits_of(model, l1, h1)
    reader = readers(model, l2, h2)[kind]
    first, second = f"{l1}.{h1}", f"{l2}.{h2}"
    swapped = ", so Q and K are swapped or a transpose is missing or extra"
    mistakes = {f"that is the {other}-composition score ({SIDE[other]}): {kind}-composition "
                f"reads through {SIDE[kind]}" + (swapped if {kind, other} == {"Q", "K"} else ""):
                dense_score(ov1, readers(model, l2, h2)[other])
                for other in "QKV" if other != kind}
    mistakes.update({
        f"the product is in the wrong order: head {first} writes first, then {second} reads "
        f"(x @ W_OV^{{{first}}} @ ...)": dense_score(reader, ov1),
        f"W_OV of head {first} is transposed (this codebase multiplies x @ W; W_V is (D, E), "
        f"W_O (E, D))": dense_score(ov1.T, reader),
        f"the later head's matrix is transposed ({kind}-composition of head {second})":
            dense_score(ov1, reader.T),
        f"the roles are swapped: the earlier head {first} writes, the later head {second} "
        f"reads": dense_score(circuits_of(model, l2, h2)[0], readers(model, l1, h1)[kind]),
        f"the heads are crossed: h1 = {h1} is a head of layer {l1}, h2 = {h2} of layer {l2}":
            dense_score(circuits_of(model, l1, h2)[0], readers(model, l2, h1)[kind]),
        f"that compares head {second} with itself: the writer is head {first}":
            dense_score(circuits_of(model, l2, h2)[0], reader),
        f"that compares head {first} with itself: the reader is head {second}":
            dense_score(ov1, readers(model, l1, h1)[kind]),
        "the denominator is missing (did you call composition_score?)":
            frobenius(ov1 @ reader)})
    return mistakes


def check_pair_scores(kind, function):
    model = random_model()
    library = composition_scores(model)[kind]
    for l1, h1, l2, h2 in PAIRS:
        yours = function(model, l1, h1, l2, h2)
        check_shape(f"{kind.lower()}_composition(model, {l1}, {h1}, {l2}, {h2})", yours, (),
                    "one number for one pair of heads")
        check_close(f"{kind}-composition of head {l2}.{h2} reading head {l1}.{h1}", yours,
                    library[l2, h2, l1, h1], f"circuits.composition_scores(model)['{kind}']",
                    rtol=1e-8, mistakes=pair_mistakes(model, kind, l1, h1, l2, h2))
    handmade = induction_model(d_vocab=16, n_ctx=24)   # 1.0's keys read 0.0's output, only
    expected = composition_scores(handmade)[kind][1, 0, 0, 0]
    check_close(f"{kind}-composition of the hand-built induction head 1.0 with the "
                f"previous-token head 0.0 (circuits.induction_model)",
                function(handmade, 0, 0, 1, 0), expected, "circuits.composition_scores",
                rtol=1e-6, atol=1e-9,
                hint="its keys, and only its keys, read what 0.0 writes: K-composition "
                     "above random, Q and V exactly 0")


@pytest.mark.checks("q_composition")
def test_q_composition_matches_the_library():
    check_pair_scores("Q", ex.q_composition)


@pytest.mark.checks("k_composition")
def test_k_composition_matches_the_library():
    check_pair_scores("K", ex.k_composition)


@pytest.mark.checks("v_composition")
def test_v_composition_matches_the_library():
    check_pair_scores("V", ex.v_composition)


# ---- the table ------------------------------------------------------------------------------

def head(l, h):
    return f"{l}.{h}"


def check_where_heads_compose(kind, yours):
    """yours (L, H, L, H) holds a number exactly where the earlier layer is below the later."""
    L, H = yours.shape[:2]
    l2, h2, l1, h1 = np.indices(yours.shape)
    possible = l1 < l2
    scored = ~np.isnan(yours)
    if np.array_equal(scored, possible.transpose(2, 3, 0, 1)) and L > 1:
        fail(f"composition_table()['{kind}'] is indexed [earlier layer, earlier head, later "
             f"layer, later head]: the order is [later layer, later head, earlier layer, "
             f"earlier head]")
    extra = scored & ~possible
    if extra.any():
        same_head = extra & (l1 == l2) & (h1 == h2)
        found = [(what, tuple(int(i) for i in np.argwhere(mask)[0]))
                 for what, mask in (("a head with itself", same_head),
                                    ("two heads of the same layer",
                                     extra & (l1 == l2) & ~same_head),
                                    ("a head with a head of a later layer", extra & (l1 > l2)))
                 if mask.any()]
        listed = "; ".join(f"{what} (e.g. entry {index}: head {head(*index[:2])} reading "
                           f"head {head(*index[2:])}, yours {yours[index]:.3g})"
                           for what, index in found)
        fail(f"composition_table()['{kind}'] has scores where no composition is possible: "
             f"{listed}. A head reads the residual stream as it was before its own layer, so "
             f"it reads nothing from its own layer or a later one: leave those entries NaN")
    missing = possible & ~scored
    if missing.any():
        index = tuple(int(i) for i in np.argwhere(missing)[0])
        gap = index[0] - index[2]
        fail(f"composition_table()['{kind}'] is NaN at entry {index}, head {head(*index[:2])} "
             f"reading head {head(*index[2:])}"
             + (f", {gap} layers apart: a head reads what every earlier layer wrote, not only "
                f"the layer just below" if gap > 1 else ""))


@pytest.mark.checks("composition_table")
def test_composition_table_matches_the_library():
    model = random_model()
    library = composition_scores(model)
    yours = ex.composition_table(model)
    if not isinstance(yours, dict) or set(yours) != {"Q", "K", "V"}:
        fail(f"composition_table should return a dict with keys 'Q', 'K', 'V'; yours is "
             f"{type(yours).__name__}" + (f" with keys {sorted(yours)}" if isinstance(yours, dict)
                                          else ""))
    for kind in "QKV":
        table = np.asarray(yours[kind], dtype=np.float64)
        check_shape(f"composition_table()['{kind}']", table, (3, 3, 3, 3),
                    "[later layer, later head, earlier layer, earlier head]")
        check_where_heads_compose(kind, table)
        mistakes = {f"this is the {other}-composition table under the key '{kind}'":
                    library[other] for other in "QKV" if other != kind}
        mistakes["the heads are crossed: entry [l2, h2, l1, h1] is head h2 of layer l2 reading "
                 "head h1 of layer l1"] = library[kind].transpose(0, 3, 2, 1)
        check_close(f"composition_table()['{kind}']", table, library[kind],
                    f"circuits.composition_scores(model)['{kind}']", rtol=1e-8,
                    mistakes=mistakes,
                    hint=f"entry [l2, h2, l1, h1] is {kind.lower()}_composition(model, l1, h1, "
                         f"l2, h2)")
