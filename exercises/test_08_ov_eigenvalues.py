"""Exercise 08: the OV factors against circuits.full_ov_circuit, the small eigenproblem
against the dense V x V one (its definition: the non-zero eigenvalues of A B), the score on
spectra whose score is known and against the engine's, and all three together against
circuits.ov_copying_score. No copy of the solution here: a failure names the quantity,
where it is wrong and, where it can tell, the mistake.

Every size differs (3 heads, d_head 4, d_model 24, 40 tokens, 16 positions; a stack of
2 x 3 matrices of 30 x 5), so that a factor from the wrong matrix or a missing transpose is
an error or a wrong number, never a right one by luck; each head's matrices are scaled by a
factor of their own, so that two heads or two layers never give the same number.

For the teacher: the engine holds this exercise's answers: circuits.full_ov_circuit's
factors are full_ov_factors', FactoredMatrix.eigenvalues is nonzero_eigenvalues and
circuits.weights.eigenvalue_score is eigenvalue_copying_score (with a NaN threshold)."""
import numpy as np
import pytest

from circuits import full_ov_circuit, induction_model, ov_copying_score
from circuits.weights import eigenvalue_score
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex08_ov_eigenvalues")

H, E, D, V, P = 3, 4, 24, 40, 16


def random_model():
    """2 layers, 3 heads; W_V, W_O of each head scaled by a factor of their own; b_V random
    (it is no part of the full OV circuit, so a factor that adds it is wrong)."""
    model = Model(dict(n_layers=2, d_model=D, n_heads=H, d_head=E, n_ctx=P, d_vocab=V,
                       attn_only=True, normalization_type=None), seed=5, dtype=np.float64)
    rng = np.random.default_rng(8)
    scale = rng.uniform(0.3, 3.0, size=(2, 2, H))                       # layer, matrix, head
    for layer in range(2):
        for i, name in enumerate(("W_V", "W_O")):
            key = f"blocks.{layer}.attn.{name}"
            model.params[key] = model.params[key] * scale[layer, i][:, None, None]
        model.params[f"blocks.{layer}.attn.b_V"] = rng.normal(0.0, 1.0, (H, E))
    return model


def altered(model, **replaced):
    """The same model with some parameters replaced: the engine on it gives what a mistake
    computes."""
    return Model(model.config, params={**model.params, **replaced}, dtype=np.float64)


# ---- full_ov_factors -------------------------------------------------------------------------

FACTOR_SHAPES = {
    ((H, E, V), (H, V, E)): "A and B are swapped: A is the token's side (W_E, then W_V), B the "
                            "logits' side",
    ((H, D, E), (H, E, D)): "these are W_V and W_O alone, the residual stream's D x D circuit: "
                            "the full OV circuit goes from tokens (the embedding) to logits "
                            "(the unembedding)",
    ((H, P, E), (H, E, V)): "A starts from the positions (W_pos, P rows): the full OV circuit "
                            "starts from the tokens' embedding W_E",
    ((V, H, E), (H, E, V)): "A's head axis is second: (H, V, E), one matrix per head",
}


@pytest.mark.checks("full_ov_factors")
def test_factors_against_the_engine():
    model, layer = random_model(), 1
    shapes = (f"W_E (V, D) = ({V}, {D}), W_V (H, D, E) = ({H}, {D}, {E}), W_O (H, E, D) = "
              f"({H}, {E}, {D}), W_U (D, V) = ({D}, {V})")
    try:
        factors = ex.full_ov_factors(model, layer)
    except ValueError as error:
        fail(f"full_ov_factors raised ValueError ({error}) with {shapes}: two matrices whose "
             f"shapes do not chain. Is a transpose missing or misplaced, or are W_V and W_O "
             f"in the wrong order? With row vectors (x @ W) each factor reads left to right")
    if not (isinstance(factors, tuple) and len(factors) == 2):
        fail("full_ov_factors should return two arrays, (A, B)")
    A, B = (np.asarray(f, dtype=np.float64) for f in factors)
    hint = FACTOR_SHAPES.get((A.shape, B.shape), "")
    check_shape("A", A, (H, V, E), hint or "(H, V, E): one V x E matrix per head")
    check_shape("B", B, (H, E, V), hint or "(H, E, V): one E x V matrix per head")
    engine = full_ov_circuit(model, layer)
    p = model.params
    a = f"blocks.{layer}.attn."
    transposed_ov = altered(model, **{a + "W_V": p[a + "W_O"].transpose(0, 2, 1),
                                      a + "W_O": p[a + "W_V"].transpose(0, 2, 1)})
    tied = altered(model, **{"unembed.W_U": p["embed.W_E"].T})
    check_close(f"A @ B, the full OV circuit of layer {layer} (entry = head, attended token, "
                f"logit)", A @ B, engine.AB, "circuits.full_ov_circuit(model, layer)",
                rtol=1e-8, atol=1e-10,
                mistakes={
                    "W_V and W_O are transposed and swapped (the paper's column-vector order, "
                    "W_O W_V, written with transposes): with row vectors a token's value is "
                    "read by W_V first, then written by W_O":
                        full_ov_circuit(transposed_ov, layer).AB,
                    "W_U is taken to be W_E^T: this model's unembedding is a matrix of its "
                    "own, model.params['unembed.W_U']": full_ov_circuit(tied, layer).AB,
                    "b_V is added to A: a bias is added whatever the token, so it is no part "
                    "of a token -> logit circuit":
                        (engine.A + p[a + "b_V"][:, None, :]) @ engine.B,
                    "these are layer 0's heads: use the `layer` given":
                        full_ov_circuit(model, 0).AB})
    check_close(f"A (layer {layer})", A, engine.A, "circuits.full_ov_circuit(model, layer).A",
                rtol=1e-8, atol=1e-10, hint="A @ B is right, but A is not W_E W_V")
    check_close(f"B (layer {layer})", B, engine.B, "circuits.full_ov_circuit(model, layer).B",
                rtol=1e-8, atol=1e-10, hint="A @ B is right, but B is not W_O W_U")


# ---- nonzero_eigenvalues ---------------------------------------------------------------------

def shown(values):
    return "[" + ", ".join(f"{complex(v).real:.3g}{complex(v).imag:+.3g}j" for v in values) + "]"


def differ(yours, expected):
    """yours and expected are not the same eigenvalues, in any order: their sorted real
    parts, imaginary parts or moduli differ (sorting is order-free and continuous)."""
    scale = 1e-7 * (1.0 + np.abs(expected).max())
    return any(np.abs(np.sort(part(yours)) - np.sort(part(expected))).max() > scale
               for part in (np.real, np.imag, np.abs))


@pytest.mark.checks("nonzero_eigenvalues")
def test_small_eigenvalues_are_the_dense_ones():
    rng = np.random.default_rng(0)
    stack, n, k = (2, 3), 30, 5
    A, B = rng.normal(size=stack + (n, k)), rng.normal(size=stack + (k, n))
    try:
        small = ex.nonzero_eigenvalues(A.copy(), B.copy())
    except ValueError as error:
        fail(f"nonzero_eigenvalues raised ValueError ({error}) on a stack: A (2, 3, {n}, {k}), "
             f"B (2, 3, {k}, {n}). NumPy's matmul and eigenvalue routines work on the last two "
             f"axes of a stack; `.T` reverses every axis, not only those two")
    small = np.asarray(small)
    hints = {stack + (n,): f"these are the {n} eigenvalues of the {n} x {n} product A B: "
                           f"nonzero_eigenvalues returns the {k} of the small {k} x {k} one",
             (k,): "one matrix's eigenvalues: A and B are stacks of 2 x 3 matrices, and "
                   "the result keeps those leading axes",
             (3, k): "one layer of the stack: A and B are stacks of 2 x 3 matrices, and the "
                     "result keeps those leading axes"}
    check_shape("nonzero_eigenvalues", small, stack + (k,),
                hints.get(small.shape, f"the {k} eigenvalues of each matrix of the stack"))
    for index in np.ndindex(*stack):
        dense = np.linalg.eigvals(A[index] @ B[index])                 # (n,), rank <= k
        expected = dense[np.argsort(-np.abs(dense))[:k]]
        if np.abs(np.sort(np.abs(dense))[:-k]).max() > 1e-8 * np.abs(expected).max():
            fail("internal: the dense product should have only 5 non-zero eigenvalues")
        yours = small[index]
        if not differ(yours, expected):
            continue
        where = (f"nonzero_eigenvalues of matrix {index} of the stack: yours {shown(yours)}, "
                 f"the non-zero eigenvalues of its {n} x {n} A B are {shown(expected)}")
        if np.isrealobj(yours) or np.abs(np.imag(yours)).max() == 0:
            if (np.real(yours) >= 0).all():
                fail(f"{where}. Yours are all real and >= 0, but these eigenvalues include "
                     f"negative and complex ones: are yours singular values, or the "
                     f"eigenvalues of a symmetric (Gram) matrix?")
            fail(f"{where}. Yours are all real, but these come in complex conjugate pairs: "
                 f"the product is not symmetric, and a routine for symmetric matrices reads "
                 f"one triangle of it only")
        fail(f"{where}. Are they the eigenvalues of the product of each matrix's own two "
             f"factors, in the right order?")


# ---- eigenvalue_copying_score ----------------------------------------------------------------

KNOWN = {"all positive": ([3.0, 1.0, 0.5], 1.0),
         "all negative": ([-2.0, -1.0, -0.1], -1.0),
         "half and half": ([2.0, -2.0, 1.0, -1.0], 0.0),
         "a complex pair": ([1 + 1j, 1 - 1j], 1 / np.sqrt(2)),
         "zero (a circuit that is exactly 0)": ([0.0, 0.0, 0.0, 0.0], np.nan)}


def known_score_message(name, eigenvalues, expected, yours):
    """What a wrong score on one of the KNOWN spectra points to."""
    said = (f"eigenvalue_copying_score of {name} eigenvalues {eigenvalues}: yours is "
            f"{yours:.3g}, it is {expected:.3g}")
    if np.isnan(expected):
        return (f"{said}: a circuit that is exactly 0 copies nothing and suppresses nothing, "
                f"0 / 0; leave it NaN, as circuits.ov_copying_score does")
    if np.isnan(yours):
        return (f"{said}. NaN is 0 / 0: these eigenvalues sum to 0, but their sizes do not; is "
                f"the denominator the size of the sum rather than the sum of the sizes?")
    if abs(yours) > 1 + 1e-9:
        return (f"{said}: outside [-1, 1]. Is it a mean on one side of the ratio and a sum on "
                f"the other?")
    if name == "all positive" and abs(yours - 1 / 3) < 1e-6:
        return f"{said}. Is it a mean on one side of the ratio and a sum on the other?"
    if name == "all negative" and abs(yours - 1) < 1e-6:
        return (f"{said}: a head whose eigenvalues are all negative suppresses what it attends "
                f"to, and scores -1. Is the sum's sign lost (an absolute value of the sum)?")
    if name == "a complex pair" and abs(yours - 1) < 1e-6:
        return (f"{said}. The size of 1 + 1j is its modulus, sqrt(2), not its real part 1 (and "
                f"the denominator sums the sizes, not the size of the sum)")
    return said


@pytest.mark.checks("eigenvalue_copying_score")
def test_score_of_known_spectra():
    for name, (eigenvalues, expected) in KNOWN.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            score = ex.eigenvalue_copying_score(np.array(eigenvalues, dtype=complex))
        if np.iscomplexobj(score):
            fail(f"eigenvalue_copying_score of {name} eigenvalues {eigenvalues} is complex "
                 f"({complex(np.asarray(score).ravel()[0]):.3g}): the score is a real number, "
                 f"the real part of the ratio")
        check_shape(f"eigenvalue_copying_score of one spectrum {eigenvalues}", score, (),
                    "one number for one spectrum (the last axis)")
        score = float(score)
        if not (np.isnan(score) and np.isnan(expected)) and not abs(score - expected) < 1e-9:
            fail(known_score_message(name, eigenvalues, expected, score))


@pytest.mark.checks("eigenvalue_copying_score")
def test_score_of_a_stack_against_the_engine():
    """A (4, 3, 6) stack of spectra (each closed under conjugation, as a real matrix's): one
    score per spectrum, as the engine's."""
    rng = np.random.default_rng(2)
    pairs = rng.normal(size=(4, 3, 2)) + 1j * rng.normal(size=(4, 3, 2))
    eigenvalues = np.concatenate([pairs, pairs.conj(), rng.normal(size=(4, 3, 2))], -1)
    score = np.asarray(ex.eigenvalue_copying_score(eigenvalues.copy()))
    check_shape("eigenvalue_copying_score of a (4, 3, 6) stack", score, (4, 3),
                "one score per spectrum: the eigenvalues are the last axis" if score.shape in (
                    (3, 6), (4, 6), (4, 3, 6), ()) else "one score per spectrum")
    if np.iscomplexobj(score):
        fail("eigenvalue_copying_score is complex: the score is the real part of the ratio")
    check_close("eigenvalue_copying_score of a (4, 3, 6) stack (entry = its index)", score,
                eigenvalue_score(eigenvalues), "circuits.weights.eigenvalue_score", rtol=1e-9)


# ---- all three against the library -------------------------------------------------------------

@pytest.mark.checks("eigenvalue_copying_score")
@pytest.mark.parametrize("which", ["random", "hand-built"])
def test_matches_the_library(which):
    model = random_model() if which == "random" else induction_model(d_vocab=20, n_ctx=16)
    with np.errstate(invalid="ignore", divide="ignore"):
        yours = np.stack([ex.eigenvalue_copying_score(ex.nonzero_eigenvalues(
            *ex.full_ov_factors(model, layer))) for layer in range(model.config.n_layers)])
    expected = ov_copying_score(model)
    yours_nan, expected_nan = np.isnan(yours), np.isnan(expected)
    hint = ""
    if (expected_nan & ~yours_nan).any():
        hint = ("the library's score is NaN where a head's full OV circuit is exactly 0 (the "
                "hand-built head 0.0 writes where W_U does not read): leave 0 / 0 as NaN")
    elif (yours_nan & ~expected_nan).any():
        hint = "yours is NaN where the circuit is not 0"
    check_close(f"OV copying scores ({which} model; entry = (layer, head))", yours, expected,
                "circuits.ov_copying_score", rtol=1e-6, atol=1e-9, hint=hint)
