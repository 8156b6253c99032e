"""Exercise 08: the OV circuit and its eigenvalue copying score; why eigenvalues of BA suffice.

Paper: Argument 5, "Summary of Reverse Engineering Induction Heads": copying "is done by the
OV (Output-Value) circuit ... a copying matrix OV circuit, most easily characterized by its
positive eigenvalues", and "Validating head activation evaluators: Copying" (the sum of the
eigenvalues divided by the sum of their absolute values).

What to compute, for a model without LayerNorm:
  1. full_ov_factors: the full OV circuit W_E W_V W_O W_U (V x V: attended token -> logits)
     as two factors, A = W_E W_V (H, V, E) and B = W_O W_U (H, E, V). Never multiply them.
  2. nonzero_eigenvalues(A, B): the eigenvalues of the small E x E product B A.
  3. eigenvalue_copying_score(eigenvalues): sum(l) / sum(|l|), real part: +1 when every
     eigenvalue is positive (the head copies), -1 when every one is negative.

Shapes: full_ov_factors -> A (H, V, E), B (H, E, V). nonzero_eigenvalues -> (H, E) complex.
        eigenvalue_copying_score: (..., E) -> (...) float.

Why do the eigenvalues of BA suffice? Answer it before you write nonzero_eigenvalues (its
hints hold the argument). A 256 x 256 eigenproblem becomes a 64 x 64 one; for a real
model's 50k-token vocabulary, 50k x 50k becomes 128 x 128.

Run: python -m exercises.ex08_ov_eigenvalues    Check: make exercise N=8
Hints, one step at a time: python -m exercises.hint 8 (then --step 2)
"""
import time

import numpy as np

from exercises import common


def full_ov_factors(model, layer):
    """-> A = W_E W_V (H, V, E), B = W_O W_U (H, E, V), float64."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
    raise NotImplementedError(
        'exercise 08: A and B from the embedding, W_V, W_O and the unembedding')


def nonzero_eigenvalues(A, B):
    """A (..., V, E), B (..., E, V) -> the E eigenvalues of B A (..., E), complex."""
    raise NotImplementedError('exercise 08: the eigenvalues of the small product')


def eigenvalue_copying_score(eigenvalues):
    """(..., E) complex -> (...): sum(l).real / sum(|l|)."""
    raise NotImplementedError('exercise 08: the ratio, real part')


if __name__ == "__main__":
    plt = common.pyplot()
    model = common.trained_run().model()
    L, H = model.config.n_layers, model.config.n_heads
    fig, axes = plt.subplots(L, H, figsize=(4 * H, 3.6 * L), squeeze=False)
    for layer in range(L):
        A, B = full_ov_factors(model, layer)
        start = time.perf_counter()
        small = nonzero_eigenvalues(A, B)                                  # (H, E)
        small_s = time.perf_counter() - start
        start = time.perf_counter()
        np.linalg.eigvals(A @ B)                                           # (H, V, V), the slow way
        dense_s = time.perf_counter() - start
        print(f"layer {layer}: eigenvalues of B A {small_s * 1e3:.1f} ms, of A B "
              f"{dense_s * 1e3:.1f} ms")
        for head, score in enumerate(eigenvalue_copying_score(small)):
            print(f"  head {layer}.{head}: OV eigenvalue copying score {score:+.2f}")
            ax = axes[layer, head]
            ax.scatter(small[head].real, small[head].imag, s=10)
            ax.axvline(0, color="gray", lw=0.5), ax.axhline(0, color="gray", lw=0.5)
            ax.set(title=f"head {layer}.{head}: score {score:+.2f}", xlabel="real",
                   ylabel="imaginary")
    fig.suptitle("eigenvalues of each head's full OV circuit (positive real: copying)")
    common.save(fig, "ex08_ov_eigenvalues")
