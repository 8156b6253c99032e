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
    raise NotImplementedError(
        'exercise 17: three Frobenius norms from the factors, through the small inner sizes')


def q_composition(model, l1, h1, l2, h2):
    """How much head h2 of layer l2 reads with its queries what head h1 of layer l1 < l2
    writes -> float."""
    raise NotImplementedError(
        "exercise 17: the earlier head's W_OV, then the later head's query side")


def k_composition(model, l1, h1, l2, h2):
    """How much head h2 of layer l2 reads with its keys what head h1 of layer l1 < l2
    writes -> float."""
    raise NotImplementedError(
        "exercise 17: the earlier head's W_OV, then the later head's key side")


def v_composition(model, l1, h1, l2, h2):
    """How much head h2 of layer l2 moves on, through its values, what head h1 of layer
    l1 < l2 writes -> float."""
    raise NotImplementedError(
        "exercise 17: the earlier head's W_OV, then the later head's W_OV")


def composition_table(model):
    """-> {"Q", "K", "V": (L, H, L, H)} [later layer, later head, earlier layer, earlier
    head], NaN wherever the earlier layer is not below the later one."""
    L, H = model.config.n_layers, model.config.n_heads
    raise NotImplementedError(
        'exercise 17: every pair of an earlier and a later head, NaN elsewhere')


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
