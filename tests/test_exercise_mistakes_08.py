"""Exercise 08's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is a reference function with one thing wrong; the exercise's own checks
(exercises/test_08_ov_eigenvalues.py) are run on it and must fail with a message that names
the problem. The mistaken variants are near copies of the solution: they live here, not in
the students' tests."""
import numpy as np
import pytest

import exercises.test_08_ov_eigenvalues as checks
from exercises.solutions import ex08_ov_eigenvalues as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


with_mistake, failure_of = mistakes.bound(checks, solution)


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    checks.test_factors_against_the_engine()
    checks.test_small_eigenvalues_are_the_dense_ones()
    checks.test_score_of_known_spectra()
    checks.test_score_of_a_stack_against_the_engine()
    for which in ("random", "hand-built"):
        checks.test_matches_the_library(which)


# ---- full_ov_factors ---------------------------------------------------------------------------

def factors(form="right", layer_of=None):
    def full_ov_factors(model, layer):
        p = {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
        a = f"blocks.{layer if layer_of is None else layer_of}.attn."
        W_E, W_V, W_O, W_U = p["embed.W_E"], p[a + "W_V"], p[a + "W_O"], p["unembed.W_U"]
        T = lambda m: m.transpose(0, 2, 1)
        return {"right": lambda: (W_E @ W_V, W_O @ W_U),
                "swapped": lambda: (W_O @ W_U, W_E @ W_V),
                "column-vector order": lambda: (W_E @ T(W_O), T(W_V) @ W_U),
                "W_O first": lambda: (W_E @ W_O, W_V @ W_U),
                "tied unembedding": lambda: (W_E @ W_V, W_O @ W_E.T),
                "with b_V": lambda: (W_E @ W_V + p[a + "b_V"][:, None, :], W_O @ W_U),
                "no embeddings": lambda: (W_V, W_O),
                "positions": lambda: (p["pos_embed.W_pos"] @ W_V, W_O @ W_U),
                "heads second": lambda: (np.einsum("vd,hde->vhe", W_E, W_V), W_O @ W_U)}[form]()
    return full_ov_factors


@pytest.mark.parametrize("form, says", [
    ("swapped", ["A and B are swapped"]),
    ("column-vector order", ["W_V and W_O are transposed and swapped", "column-vector order",
                             "read by W_V first, then written by W_O"]),
    ("W_O first", ["raised ValueError", "W_V (H, D, E) = (3, 24, 4)",
                   "W_V and W_O in the wrong order"]),
    ("tied unembedding", ["W_U is taken to be W_E^T"]),
    ("with b_V", ["b_V is added to A"]),
    ("no embeddings", ["W_V and W_O alone", "the residual stream's D x D circuit"]),
    ("positions", ["A starts from the positions (W_pos"]),
    ("heads second", ["A's head axis is second"]),
], ids=lambda x: x if isinstance(x, str) else None)
def test_factor_mistakes_are_named(monkeypatch, form, says):
    message = failure_of(monkeypatch, checks.test_factors_against_the_engine,
                         full_ov_factors=factors(form))
    for phrase in says:
        assert phrase in message, message


def test_the_wrong_layer_is_named(monkeypatch):
    message = failure_of(monkeypatch, checks.test_factors_against_the_engine,
                         full_ov_factors=factors(layer_of=0))
    assert "layer 0's heads: use the `layer` given" in message, message


def test_the_column_vector_order_runs_so_only_its_value_names_it():
    """W_E W_O^T and W_V^T W_U chain (their shapes are A's and B's): no error catches the
    paper's order transcribed; the check names it by the product it gives."""
    A, B = factors("column-vector order")(checks.random_model(), 1)
    assert A.shape == (3, 40, 4) and B.shape == (3, 4, 40)


# ---- nonzero_eigenvalues -----------------------------------------------------------------------

def eigen(form):
    def nonzero_eigenvalues(A, B):
        return {"dense A B": lambda: np.linalg.eigvals(A @ B),
                "singular values": lambda: np.linalg.svd(B @ A, compute_uv=False),
                "symmetric routine": lambda: np.linalg.eigvalsh(B @ A),
                "Gram matrix": lambda: np.linalg.eigvalsh(np.swapaxes(A, -1, -2) @ A),
                ".T on a stack": lambda: np.linalg.eigvals(A.T @ B.T),
                "first matrix only": lambda: np.linalg.eigvals(B[0, 0] @ A[0, 0]),
                "first layer only": lambda: np.linalg.eigvals(B[0] @ A[0]),
                "another matrix's B": lambda: np.linalg.eigvals(
                    np.roll(B, 1, axis=1) @ A)}[form]()
    return nonzero_eigenvalues


def test_the_random_stack_has_negative_and_complex_eigenvalues():
    """The check's stack can tell singular values and a symmetric routine from eigenvalues."""
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(2, 3, 30, 5)), rng.normal(size=(2, 3, 5, 30))
    values = solution.nonzero_eigenvalues(A, B)
    assert (np.abs(values.imag) > 1e-3).any(axis=-1).all() or (values.real < 0).any()
    assert (values.real < 0).any(axis=-1).any()


@pytest.mark.parametrize("form, says", [
    ("dense A B", ["shape (2, 3, 30)", "the 30 eigenvalues of the 30 x 30 product A B"]),
    ("singular values", ["matrix (0, 0)", "all real and >= 0", "singular values"]),
    ("symmetric routine", ["all real", "not symmetric", "one triangle"]),
    ("Gram matrix", ["all real and >= 0", "Gram"]),
    (".T on a stack", ["raised ValueError", "`.T` reverses every axis"]),
    ("first matrix only", ["shape (5,)", "one matrix's eigenvalues"]),
    ("first layer only", ["shape (3, 5)", "one layer of the stack"]),
    ("another matrix's B", ["matrix (0, 0)", "each matrix's own two factors"]),
], ids=lambda x: x if isinstance(x, str) else None)
def test_eigenvalue_mistakes_are_named(monkeypatch, form, says):
    message = failure_of(monkeypatch, checks.test_small_eigenvalues_are_the_dense_ones,
                         nonzero_eigenvalues=eigen(form))
    for phrase in says:
        assert phrase in message, message


# ---- eigenvalue_copying_score ------------------------------------------------------------------

def score(form):
    def eigenvalue_copying_score(l):
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"abs of the sum": lambda: np.abs(l.sum(-1)) / np.abs(l).sum(-1),
                    "size of the sum": lambda: l.sum(-1).real / np.abs(l.sum(-1)),
                    "real parts' sizes": lambda: l.real.sum(-1) / np.abs(l.real).sum(-1),
                    "mean over sum": lambda: l.mean(-1).real / np.abs(l).sum(-1),
                    "sum over mean": lambda: l.sum(-1).real / np.abs(l).mean(-1),
                    "complex": lambda: l.sum(-1) / np.abs(l).sum(-1),
                    "axis 0": lambda: l.sum(0).real / np.abs(l).sum(0),
                    "zero for a zero circuit": lambda: np.nan_to_num(
                        l.sum(-1).real / np.abs(l).sum(-1))}[form]()
    return eigenvalue_copying_score


@pytest.mark.parametrize("form, says", [
    ("abs of the sum", ["all negative", "yours is 1, it is -1", "sign lost"]),
    ("size of the sum", ["half and half", "yours is nan", "size of the sum rather than the "
                                                          "sum of the sizes"]),
    ("real parts' sizes", ["complex pair", "yours is 1, it is 0.707", "its modulus"]),
    ("mean over sum", ["all positive", "yours is 0.333", "a mean on one side"]),
    ("sum over mean", ["outside [-1, 1]", "a mean on one side"]),
    ("complex", ["is complex", "the real part"]),
    ("zero for a zero circuit", ["exactly 0", "yours is 0, it is nan", "leave it NaN"]),
], ids=lambda x: x if isinstance(x, str) else None)
def test_score_mistakes_are_named(monkeypatch, form, says):
    message = failure_of(monkeypatch, checks.test_score_of_known_spectra,
                         eigenvalue_copying_score=score(form))
    for phrase in says:
        assert phrase in message, message


def test_a_score_over_the_wrong_axis_is_named(monkeypatch):
    message = failure_of(monkeypatch, checks.test_score_of_a_stack_against_the_engine,
                         eigenvalue_copying_score=score("axis 0"))
    assert "shape (3, 6)" in message and "the eigenvalues are the last axis" in message, message


@pytest.mark.parametrize("form", ["abs of the sum", "real parts' sizes", "mean over sum"])
def test_score_mistakes_also_fail_against_the_library(monkeypatch, form):
    message = failure_of(monkeypatch, checks.test_matches_the_library, "random",
                         eigenvalue_copying_score=score(form))
    assert "differs from circuits.ov_copying_score" in message and "at entry" in message, message


def test_a_lost_nan_is_named_against_the_library(monkeypatch):
    message = failure_of(monkeypatch, checks.test_matches_the_library, "hand-built",
                         eigenvalue_copying_score=score("zero for a zero circuit"))
    assert "leave 0 / 0 as NaN" in message, message
