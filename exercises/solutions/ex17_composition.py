"""Exercise 17: Q-, K- and V-composition side by side, and which one the induction circuit uses.

Paper: Argument 5, "Summary of Reverse Engineering Induction Heads": "Prefix matching is
implemented with K-composition (and to a lesser extent Q-composition) in the QK Circuit
... an induction head's W_K reads from a subspace written to by an earlier attention
head." A Mathematical Framework for Transformer Circuits ("Composition") names three ways
a later head b can read what an earlier head a wrote into the residual stream: through
its queries (Q-composition), its keys (K-composition) or its values (V-composition), and
scores each by how much of what a writes the reading matrix of b picks up. Exercise 10
computed the K scores with dense D x D matrices; here all three, from the factors.

What to compute (a model without LayerNorm, as ours; row vectors, x @ W; for one head
W_Q, W_K, W_V are (D, E) and W_O is (E, D), so W_OV = W_V W_O and W_QK = W_Q W_K^T, both
D x D of rank <= E; circuits.FactoredMatrix(A, B) is the product A B kept as its factors,
with .A, .B and .T):
  1. composition_score(W_A, W_B): for W_A (m, n) and W_B (n, p), each a FactoredMatrix,

         ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

     computed from the factors with NumPy, never forming an m x n, n x p or m x p matrix
     (not with FactoredMatrix's own .norm(), the one the checks compare with). In GPT-3
     (d_model 12288, d_head 128) a D x D matrix is 1.2 GB in float64, one per pair of
     heads; the factors' Gram matrices are 128 x 128.
  2. q_composition, k_composition, v_composition(model, l1, h1, l2, h2): head h1 of layer
     l1 writes y W_OV^{h1} into the stream; head h2 of a later layer l2 reads it with its
     query, its key or its value. Which D x D matrix of h2 comes after W_OV^{h1}, and
     which way round? Write out the attention score x_i W_QK x_j^T with that output added
     to the query x_i, then to the key x_j, and the value x_j W_OV with it added to x_j.
  3. composition_table(model): all three for every pair of a head and a head of a later
     layer -> {"Q", "K", "V": (L, H, L, H)} indexed [later layer, later head, earlier
     layer, earlier head], NaN wherever the "earlier" layer is not earlier.
Two random rank-E matrices score about 1/sqrt(D) (circuits.composition_baseline): a score
means something only against that. The run prints the three tables of the trained 2-layer
model against it, a verdict on which composition stands out, and plots them side by side.

Shapes: composition_score -> float. q/k/v_composition -> float.
        composition_table -> dict of three (L, H, L, H) arrays.

Run: python -m exercises.ex17_composition    Check: make exercise N=17
Hints, one step at a time: python -m exercises.hint 17 (then --step 2, --step 3)
"""
import itertools

import numpy as np

from circuits import FactoredMatrix, HeadScores, composition_baseline, composition_scores
from exercises import common


def head_weights(model, layer, head):
    """One head's weights as float64 (given): W_Q, W_K, W_V (D, E) and W_O (E, D)."""
    a = f"blocks.{layer}.attn."
    return tuple(np.asarray(model.params[a + name][head], dtype=np.float64)
                 for name in ("W_Q", "W_K", "W_V", "W_O"))


def composition_score(W_A, W_B):
    """W_A (m, n), W_B (n, p): 2-D FactoredMatrix each -> ||W_A W_B||_F / (||W_A||_F ||W_B||_F)."""
    # BEGIN SOLUTION: three Frobenius norms from the factors, through the small inner sizes
    # Hint 1: `W_A.A`, `W_A.B` are W_A's factors (m, k1) and (k1, n). The squared Frobenius
    #   norm of a matrix X is trace(X^T X), and a trace does not change when you move a
    #   factor from the back of a product to the front.
    # Hint 2: W_A W_B = A1 (B1 A2 B2): one factored matrix again, L R with L = A1 (m, k1)
    #   and R = B1 A2 B2 (k1, p). For any X = L R, ||X||_F^2 = trace((L^T L)(R R^T)): two
    #   k x k matrices. A sum of squares computed this way can come out a hair below 0:
    #   clip it at 0 before the square root.
    # Hint 3: `norm = lambda L, R: np.sqrt(max(np.trace((L.T @ L) @ (R @ R.T)), 0.0))`, then
    #   `norm(W_A.A, W_A.B @ W_B.A @ W_B.B) / (norm(W_A.A, W_A.B) * norm(W_B.A, W_B.B))`.
    def norm(left, right):           # ||left @ right||_F from two k x k Gram matrices
        return np.sqrt(max(np.trace((left.T @ left) @ (right @ right.T)), 0.0))
    product = norm(W_A.A, W_A.B @ W_B.A @ W_B.B)                       # (k1, k2) @ (k2, p) inside
    return float(product / (norm(W_A.A, W_A.B) * norm(W_B.A, W_B.B)))
    # END SOLUTION


def q_composition(model, l1, h1, l2, h2):
    """How much head h2 of layer l2 reads with its queries what head h1 of layer l1 < l2
    writes -> float."""
    # BEGIN SOLUTION: the earlier head's W_OV, then the later head's query side
    # Hint 1: add head l1.h1's output y W_OV^{h1} to the query x_i of head l2.h2 and write
    #   out the score (x_i + y W_OV^{h1}) W_QK^{h2} x_j^T. Which matrices stand between y
    #   and x_j^T, in which order?
    # Hint 2: the new term is y W_OV^{h1} W_QK^{h2} x_j^T: score W_OV^{h1} (first) with
    #   W_QK^{h2} (second). Build each as a FactoredMatrix from `head_weights`: W_OV is
    #   W_V (D, E) times W_O (E, D); W_QK is W_Q (D, E) times W_K^T (E, D).
    # Hint 3: `_, _, V1, O1 = head_weights(model, l1, h1)`, `Q2, K2, _, _ = head_weights(model,
    #   l2, h2)`, then `composition_score(FactoredMatrix(V1, O1), FactoredMatrix(Q2, K2.T))`.
    _, _, V1, O1 = head_weights(model, l1, h1)
    Q2, K2, _, _ = head_weights(model, l2, h2)
    return composition_score(FactoredMatrix(V1, O1), FactoredMatrix(Q2, K2.T))
    # END SOLUTION


def k_composition(model, l1, h1, l2, h2):
    """How much head h2 of layer l2 reads with its keys what head h1 of layer l1 < l2
    writes -> float."""
    # BEGIN SOLUTION: the earlier head's W_OV, then the later head's key side
    # Hint 1: this time y W_OV^{h1} is added to the key x_j: write out
    #   x_i W_QK^{h2} (x_j + y W_OV^{h1})^T. The new term must be turned around to read
    #   "y, then matrices, then x_i^T" (a number equals its own transpose).
    # Hint 2: x_i W_QK (y W_OV)^T = y W_OV (W_QK)^T x_i^T: score W_OV^{h1} with the
    #   transpose of W_QK^{h2}. (W_Q W_K^T)^T = W_K W_Q^T, a FactoredMatrix too.
    # Hint 3: as q_composition, with `FactoredMatrix(K2, Q2.T)` (or `FactoredMatrix(Q2,
    #   K2.T).T`) as the second matrix.
    _, _, V1, O1 = head_weights(model, l1, h1)
    Q2, K2, _, _ = head_weights(model, l2, h2)
    return composition_score(FactoredMatrix(V1, O1), FactoredMatrix(K2, Q2.T))
    # END SOLUTION


def v_composition(model, l1, h1, l2, h2):
    """How much head h2 of layer l2 moves on, through its values, what head h1 of layer
    l1 < l2 writes -> float."""
    # BEGIN SOLUTION: the earlier head's W_OV, then the later head's W_OV
    # Hint 1: head l2.h2 writes x_j W_OV^{h2} for the position j it attends to. Add
    #   y W_OV^{h1} to x_j.
    # Hint 2: the new term is y W_OV^{h1} W_OV^{h2}: the earlier W_OV first, the later one
    #   second, each W_V times W_O of its own head.
    # Hint 3: `composition_score(FactoredMatrix(V1, O1), FactoredMatrix(V2, O2))` with
    #   `_, _, V2, O2 = head_weights(model, l2, h2)`.
    _, _, V1, O1 = head_weights(model, l1, h1)
    _, _, V2, O2 = head_weights(model, l2, h2)
    return composition_score(FactoredMatrix(V1, O1), FactoredMatrix(V2, O2))
    # END SOLUTION


def composition_table(model):
    """-> {"Q", "K", "V": (L, H, L, H)} [later layer, later head, earlier layer, earlier
    head], NaN wherever the earlier layer is not below the later one."""
    L, H = model.config.n_layers, model.config.n_heads
    # BEGIN SOLUTION: every pair of an earlier and a later head, NaN elsewhere
    # Hint 1: which pairs can compose at all? Every head of a layer reads the residual
    #   stream as it was before that layer, so what can it read from a head of its own
    #   layer, or of a later one?
    # Hint 2: only earlier layer < later layer: loop the later layer from 1, the earlier
    #   one below it, and every head of each; start each table as NaN everywhere.
    # Hint 3: `table = {kind: np.full((L, H, L, H), np.nan) for kind in "QKV"}`; then for
    #   `l2 in range(1, L)`, `l1 in range(l2)` and every h1, h2:
    #   `table["K"][l2, h2, l1, h1] = k_composition(model, l1, h1, l2, h2)`, and Q, V alike.
    score = {"Q": q_composition, "K": k_composition, "V": v_composition}
    table = {kind: np.full((L, H, L, H), np.nan) for kind in score}
    for l2, h2, h1 in itertools.product(range(1, L), range(H), range(H)):
        for l1 in range(l2):                     # a head reads only what earlier layers wrote
            for kind, composition in score.items():
                table[kind][l2, h2, l1, h1] = composition(model, l1, h1, l2, h2)
    return table
    # END SOLUTION


def pairs(L, H):
    """Every head pair that can compose: (later "l.h", earlier "l.h", (l2, h2, l1, h1))."""
    return [(f"{l2}.{h2}", f"{l1}.{h1}", (l2, h2, l1, h1))
            for l2 in range(1, L) for h2 in range(H) for l1 in range(l2) for h1 in range(H)]


def verdict(table, baseline, classes):
    """Which composition stands out against the random baseline (classes (L, H): each head's
    class, circuits.classify_heads) -> (a sentence, True if the strongest score of all three
    tables is K-composition from a previous-token head into an induction head, > 1.5x)."""
    ratio = {kind: table[kind] / baseline for kind in "QKV"}

    def strongest(kinds):                        # -> (kind, later, earlier, index)
        return max(((kind, *pair) for kind in kinds for pair in pairs(*classes.shape)),
                   key=lambda found: ratio[found[0]][found[3]])
    kind, later, earlier, index = strongest("QKV")
    l2, h2, l1, h1 = index
    others = [k for k in "QKV" if k != kind]
    same = ", ".join(f"{k} {ratio[k][index]:.1f}x" for k in others)
    elsewhere = "; ".join(f"the largest {k}: {b} <- {a} {ratio[k][i]:.1f}x"
                          for k, b, a, i in map(strongest, others))
    found = (kind == "K" and classes[l1, h1] == "previous-token"
             and classes[l2, h2] == "induction" and ratio[kind][index] > 1.5)
    what = (f"K-composition stands out: the keys of induction head {later} read "
            f"previous-token head {earlier}" if found else
            f"the strongest is {kind}-composition, {classes[l2, h2]} head {later} reading "
            f"{classes[l1, h1]} head {earlier}, not the induction circuit's K-composition")
    return (f"{what}, {ratio[kind][index]:.1f}x random; between the same heads {same}; "
            f"{elsewhere}", found)


if __name__ == "__main__":
    plt = common.pyplot()
    from matplotlib.colors import TwoSlopeNorm
    run = common.trained_run()
    model = run.model()
    cfg = model.config
    L, H = cfg.n_layers, cfg.n_heads
    table = composition_table(model)
    library = composition_scores(model)
    agree = all(np.allclose(table[k], library[k], rtol=1e-6, equal_nan=True) for k in "QKV")
    print(f"your tables equal circuits.composition_scores: {'ok' if agree else 'WRONG'}")
    baseline = composition_baseline(cfg.d_model, cfg.d_head)
    classes = HeadScores.of_run(run).classes
    name = {(l, h): f"{l}.{h}" + (f" ({classes[l, h]})" if classes[l, h] != "other" else "")
            for l in range(L) for h in range(H)}
    print(f"score (score / random); random rank-{cfg.d_head} matrices in d_model "
          f"{cfg.d_model}: {baseline:.3f}")
    print(f"{'later <- earlier':<42}" + "".join(f"{kind:>15}" for kind in "QKV"))
    for later, earlier, (l2, h2, l1, h1) in pairs(L, H):
        print(f"{name[l2, h2] + ' <- ' + name[l1, h1]:<42}" + "".join(
            f"{table[k][l2, h2, l1, h1]:>8.3f} ({table[k][l2, h2, l1, h1] / baseline:.1f}x)"
            for k in "QKV"))
    text, standout = verdict(table, baseline, classes)
    print("verdict:", text if agree else f"WRONG, your tables are not the library's: {text}")
    rows = [(l, h) for l in range(1, L) for h in range(H)]          # later heads: read
    columns = [(l, h) for l in range(L - 1) for h in range(H)]      # earlier heads: write
    grids = {k: np.array([[table[k][r + c] for c in columns] for r in rows]) / baseline
             for k in "QKV"}
    top = max(2.0, *(np.nanmax(grid) for grid in grids.values()))
    around_random = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=top)  # white: as random matrices
    fig, axes = plt.subplots(1, 3, figsize=(13, 1.8 + 0.9 * len(rows)))
    for ax, kind in zip(axes, "QKV"):
        image = ax.imshow(grids[kind], cmap="coolwarm", norm=around_random)
        for (i, j), value in np.ndenumerate(grids[kind]):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.1f}x", ha="center", va="center")
        ax.set_xticks(range(len(columns)), [name[c] for c in columns], fontsize=8)
        ax.set_yticks(range(len(rows)), [name[r] for r in rows], fontsize=8)
        ax.set(xlabel="earlier head (writes)", title=f"{kind}-composition / random")
    axes[0].set_ylabel("later head (reads)")
    fig.colorbar(image, ax=axes[-1], label=f"score / random ({baseline:.3f})")
    fig.suptitle("K-composition from the previous-token head stands out" if standout and agree
                 else "see the printed verdict")
    common.save(fig, "ex17_composition")
