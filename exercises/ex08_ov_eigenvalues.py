"""Exercise 08: the OV circuit and its eigenvalue copying score; why eigenvalues of BA suffice.

Paper: Argument 5, "Summary of Reverse Engineering Induction Heads": copying "is done by the
OV (Output-Value) circuit ... a copying matrix OV circuit, most easily characterized by its
positive eigenvalues", and "Validating head activation evaluators: Copying" (the sum of the
eigenvalues divided by the sum of their absolute values).

What to compute, for a model without LayerNorm (row vectors, x @ W, as the parameters):
  1. full_ov_factors: the full OV circuit W_E W_V W_O W_U (V x V: attended token -> logits)
     as two factors, A = W_E W_V (H, V, E) and B = W_O W_U (H, E, V). Never multiply them.
  2. nonzero_eigenvalues(A, B): the eigenvalues of the small E x E product B A, for every
     matrix of a stack (A and B may have any leading axes: heads, layers, ...).
  3. eigenvalue_copying_score(eigenvalues): sum(l) / sum(|l|), real part: +1 when every
     eigenvalue is positive (the head copies), -1 when every one is negative.

Shapes: full_ov_factors -> A (H, V, E), B (H, E, V). nonzero_eigenvalues: A (..., V, E),
        B (..., E, V) -> (..., E) complex. eigenvalue_copying_score: (..., E) -> (...) float.

W_E is model.params["embed.W_E"] (V, D), W_V "blocks.{l}.attn.W_V" (H, D, E), W_O (H, E, D),
W_U "unembed.W_U" (D, V).

Why do the eigenvalues of BA suffice? Answer it before you write nonzero_eigenvalues (its
hints hold the argument). A 256 x 256 eigenproblem becomes a 64 x 64 one; for a real
model's 50k-token vocabulary, 50k x 50k becomes 128 x 128.

The run checks itself against circuits (full_ov_circuit's eigenvalues, ov_copying_score)
and says WRONG where yours differ.

Run: python -m exercises.ex08_ov_eigenvalues    Check: make exercise N=8
Hints, one step at a time: python -m exercises.hint 8 (then --step 2, --step 3)
"""
import time

import numpy as np

import circuits
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
    engine_scores = circuits.ov_copying_score(model)
    wrong = []                                       # what differs from circuits, said once

    def say_wrong(text):
        wrong.append(text)
        print(f"WRONG: {text}")
    fig, axes = plt.subplots(L, H, figsize=(4 * H, 3.6 * L), squeeze=False)
    for layer in range(L):
        A, B = full_ov_factors(model, layer)
        engine = circuits.full_ov_circuit(model, layer)      # the same factors, kept factored
        if np.shape(A) != engine.A.shape or np.shape(B) != engine.B.shape:
            say_wrong(f"layer {layer}'s factors have shapes {np.shape(A)}, {np.shape(B)}; "
                      f"circuits.full_ov_circuit's are {engine.A.shape}, {engine.B.shape}")
            continue
        if not np.allclose(A @ B, engine.AB, rtol=1e-6, atol=1e-9):
            say_wrong(f"layer {layer}'s A @ B differs from circuits.full_ov_circuit's by up to "
                      f"{np.abs(A @ B - engine.AB).max():.3g}")
        start = time.perf_counter()
        small = nonzero_eigenvalues(A, B)                                  # (H, E)
        small_s = time.perf_counter() - start
        start = time.perf_counter()
        np.linalg.eigvals(A @ B)                                           # (H, V, V), the slow way
        dense_s = time.perf_counter() - start
        print(f"layer {layer}: eigenvalues of B A {small_s * 1e3:.1f} ms, of A B "
              f"{dense_s * 1e3:.1f} ms")
        expected = engine.eigenvalues()
        if np.shape(small) != expected.shape:
            say_wrong(f"layer {layer}: eigenvalues of shape {np.shape(small)}; circuits."
                      f"full_ov_circuit's are {expected.shape}")
            continue
        scale = 1e-6 * np.abs(expected).max()                # sorted parts: order-free
        for what, part in (("real parts", np.real), ("imaginary parts", np.imag),
                           ("moduli", np.abs)):
            gap = np.abs(np.sort(part(small)) - np.sort(part(expected))).max()
            if gap > scale:
                say_wrong(f"layer {layer}'s eigenvalues are not circuits.full_ov_circuit's: "
                          f"their sorted {what} differ by up to {gap:.3g}")
                break
        for head, score in enumerate(eigenvalue_copying_score(small)):
            print(f"  head {layer}.{head}: OV eigenvalue copying score {score:+.2f}")
            if not np.isclose(score, engine_scores[layer, head], atol=1e-6, equal_nan=True):
                say_wrong(f"head {layer}.{head}'s score is {score:+.3f}; circuits."
                          f"ov_copying_score gives {engine_scores[layer, head]:+.3f}")
            ax = axes[layer, head]
            ax.scatter(small[head].real, small[head].imag, s=10)
            ax.axvline(0, color="gray", lw=0.5), ax.axhline(0, color="gray", lw=0.5)
            ax.set(title=f"head {layer}.{head}: score {score:+.2f}", xlabel="real",
                   ylabel="imaginary")
    if not wrong:
        print("ok     your factors, eigenvalues and scores are circuits' (full_ov_circuit, "
              "ov_copying_score)")
    fig.suptitle("eigenvalues of each head's full OV circuit (positive real: copying)")
    common.save(fig, "ex08_ov_eigenvalues")
