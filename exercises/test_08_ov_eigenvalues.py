"""Exercise 08: the OV factors, the small eigenproblem (against the dense V x V one) and the
score (against circuits.ov_copying_score)."""
import numpy as np
import pytest

from circuits import induction_model, ov_copying_score
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex08_ov_eigenvalues")


def random_model():
    return Model(dict(n_layers=2, d_model=24, n_heads=3, d_head=4, n_ctx=16, d_vocab=40,
                      attn_only=True, normalization_type=None), seed=5, dtype=np.float64)


@pytest.mark.checks("full_ov_factors")
def test_factors():
    model = random_model()
    A, B = ex.full_ov_factors(model, 1)
    check_shape("A", A, (3, 40, 4), "A = W_E W_V, one (V, E) matrix per head")
    check_shape("B", B, (3, 4, 40), "B = W_O W_U, one (E, V) matrix per head")
    p = model.params
    dense = p["embed.W_E"] @ p["blocks.1.attn.W_V"] @ p["blocks.1.attn.W_O"] @ p["unembed.W_U"]
    check_close("A @ B", A @ B, dense, "W_E W_V W_O W_U", rtol=1e-8, atol=1e-10)


@pytest.mark.checks("nonzero_eigenvalues")
def test_small_eigenvalues_are_the_dense_ones():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(2, 30, 5)), rng.normal(size=(2, 5, 30))
    small = np.asarray(ex.nonzero_eigenvalues(A, B))
    check_shape("nonzero_eigenvalues", small, (2, 5), "the E eigenvalues of the E x E product B A")
    dense = np.linalg.eigvals(A @ B)                                   # (2, 30, 30)
    for h in range(2):
        top = dense[h][np.argsort(-np.abs(dense[h]))[:5]]
        check_close(f"eigenvalues of head {h}, sorted", np.sort_complex(small[h]).real,
                    np.sort_complex(top).real, "the 5 largest eigenvalues of the dense A B",
                    rtol=1e-6, atol=1e-8,
                    hint="the non-zero eigenvalues of A B are those of B A (not A^T B^T)")
        rest = np.sort(np.abs(dense[h]))[:-5]
        if rest.max() > 1e-8 * np.abs(top).max():
            fail("internal: the dense product should have only 5 non-zero eigenvalues")


@pytest.mark.checks("eigenvalue_copying_score")
def test_score_of_known_spectra():
    cases = {"all positive": (np.array([3.0, 1.0, 0.5]), 1.0),
             "all negative": (np.array([-2.0, -1.0, -0.1]), -1.0),
             "half and half": (np.array([2.0, -2.0, 1.0, -1.0]), 0.0),
             "a complex pair": (np.array([1 + 1j, 1 - 1j]), 2 / (2 * np.sqrt(2)))}
    for name, (eigenvalues, expected) in cases.items():
        score = ex.eigenvalue_copying_score(eigenvalues.astype(complex))
        if np.iscomplexobj(score):
            fail("eigenvalue_copying_score should be real: take the real part of the sum")
        check_close(f"score of {name} eigenvalues {eigenvalues}", score, expected,
                    "sum(l).real / sum(|l|)", rtol=1e-9)


@pytest.mark.checks("eigenvalue_copying_score")
@pytest.mark.parametrize("which", ["random", "hand-built"])
def test_matches_the_library(which):
    model = random_model() if which == "random" else induction_model(d_vocab=20, n_ctx=16)
    yours = np.stack([ex.eigenvalue_copying_score(ex.nonzero_eigenvalues(*ex.full_ov_factors(
        model, layer))) for layer in range(model.config.n_layers)])
    check_close(f"OV copying scores ({which} model)", yours, ov_copying_score(model),
                "circuits.ov_copying_score", rtol=1e-6, atol=1e-9,
                hint="NaN is expected where the circuit is exactly zero (hand-built head 0.0 "
                     "writes where W_U does not read)")
