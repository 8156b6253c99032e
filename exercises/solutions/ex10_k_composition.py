"""Exercise 10: the K-composition score and the trace of the Id (x) h_prev (x) W term.

Paper: Argument 5, "Summary of Reverse Engineering Induction Heads": "an induction head's
W_K reads from a subspace written to by an earlier attention head ... pure K-composition
with an earlier previous token head creates a QK-circuit term of the form
Id (x) h_prev (x) W where W has positive eigenvalues", and method "(4) Trace of QK
eigenvalues" (the trace of that W, weighted by how previous-token-like each earlier head is).

What to compute (model without LayerNorm; row vectors, x @ W):
  1. k_composition_scores(model, later, earlier): for head b of layer `later` and head a
     of layer `earlier`, with W_OV^a = W_V^a W_O^a and W_QK^b = W_Q^b W_K^b^T (D, D):

         ||W_OV^a (W_QK^b)^T||_F / (||W_OV^a||_F ||W_QK^b||_F)

     How much of what a writes does b's key side read? (Random matrices: ~1/sqrt(D).)
  2. prev_token_trace(model, layer, head, previous_token_scores): the query token t meets
     a key whose previous token was t' through

         W[t, t'] = sum_k p_k  W_E[t] W_Q W_K^T (W_OV^k)^T W_E[t']^T      (V, V)

     over every head k of every earlier layer (0 .. layer - 1), p = previous_token_scores
     (L, H), indexed [layer, head]. Return its
     trace and trace / ||W||_F. A positive trace: the head prefers keys whose previous
     token equals the present token, which is prefix matching.

Shapes: k_composition_scores -> (H later heads, H earlier heads).
        prev_token_trace -> (trace float, normalised float).

Where the transposes come from: the key of head b at position j reads x_j; head a added
(attention) x_{j-1} W_OV^a to it, so b's score gains

    x_i W_QK^b (x_{j-1} W_OV^a)^T = x_i W_QK^b W_OV^a^T x_{j-1}^T.

The run checks itself against circuits.composition_scores and circuits.prev_token_qk_trace
on the trained model, and says WRONG where yours differ.

Run: python -m exercises.ex10_k_composition    Check: make exercise N=10
Hints, one step at a time: python -m exercises.hint 10 (then --step 2, --step 3)
"""
import numpy as np

from circuits import (HeadScores, composition_baseline, composition_scores,
                      prev_token_qk_trace)
from exercises import common


def _params(model):
    return {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}


def ov_matrices(model, layer):
    """W_V W_O per head (H, D, D) (given)."""
    p = _params(model)
    return p[f"blocks.{layer}.attn.W_V"] @ p[f"blocks.{layer}.attn.W_O"]


def qk_matrices(model, layer):
    """W_Q W_K^T per head (H, D, D) (given)."""
    p = _params(model)
    return p[f"blocks.{layer}.attn.W_Q"] @ p[f"blocks.{layer}.attn.W_K"].transpose(0, 2, 1)


def k_composition_scores(model, later, earlier):
    """-> (H, H) [later head b, earlier head a]."""
    # BEGIN SOLUTION: ||W_OV^a (W_QK^b)^T|| over the product of the norms, every pair
    # Hint 1: one number per pair of heads: the Frobenius norm of a D x D product over the
    #   product of two norms. Which matrix comes first, which one is transposed, and which
    #   axis of the result is the later head b?
    # Hint 2: head a writes first (x W_OV^a), then b's keys read it through its QK matrix
    #   transposed, as the docstring's last lines show. `np.linalg.norm(M, axis=(-2, -1))`
    #   is the Frobenius norm of each matrix of a stack, and broadcasting forms every pair
    #   at once: earlier heads on axis 1 (`ov[None]` is (1, a, D, D)), later heads on axis 0
    #   (`qk[:, None]`). Each pair's norm is divided by its own two norms, b's and a's.
    # Hint 3: `product = ov[None] @ qk.transpose(0, 2, 1)[:, None]` (b, a, D, D), then
    #   `norm = lambda m: np.linalg.norm(m, axis=(-2, -1))` and
    #   `return norm(product) / (norm(qk)[:, None] * norm(ov)[None, :])`.
    ov, qk = ov_matrices(model, earlier), qk_matrices(model, later)       # (H, D, D) each
    product = ov[None] @ qk.transpose(0, 2, 1)[:, None]                   # (b, a, D, D)
    norm = lambda m: np.linalg.norm(m, axis=(-2, -1))
    return norm(product) / (norm(qk)[:, None] * norm(ov)[None, :])
    # END SOLUTION


def prev_token_trace(model, layer, head, previous_token_scores):
    """-> (trace of W, trace / ||W||_F) for head `head` of `layer` >= 1."""
    p = _params(model)
    W_E, a = p["embed.W_E"], f"blocks.{layer}.attn."
    # BEGIN SOLUTION: the trace of W and its norm, never forming W for the trace
    # Hint 1: W is V x V, but only its trace and its norm are asked for. Which heads k
    #   count, and how much each? Can the sum over k be done before the embeddings are
    #   multiplied in?
    # Hint 2: sum the earlier heads first: S = sum_k p_k (W_OV^k)^T (D, D), over every head k
    #   of layers 0 .. layer - 1 (p is indexed [layer, head]). Then W is a (V, E) factor X
    #   times an (E, V) factor Y: the present token through this head's W_Q, and S read by
    #   its W_K, transposed, ending in the embedding transposed. For X (V, E) and
    #   Y (E, V), trace(X Y) = sum(X * Y^T): no V x V matrix. The norm does need the product.
    # Hint 3: `shifted = sum(np.einsum("h,hde->ed", previous_token_scores[k],
    #   ov_matrices(model, k)) for k in range(layer))`, `left = W_E @ p[a + "W_Q"][head]`,
    #   `right = p[a + "W_K"][head].T @ shifted @ W_E.T`,
    #   `trace = float(np.sum(left * right.T))`, and
    #   `return trace, trace / float(np.linalg.norm(left @ right))`.
    shifted = sum(np.einsum("h,hde->ed", previous_token_scores[k], ov_matrices(model, k))
                  for k in range(layer))                                 # (D, D)
    left = W_E @ p[a + "W_Q"][head]                                       # (V, E)
    right = p[a + "W_K"][head].T @ shifted @ W_E.T                        # (E, V)
    trace = float(np.sum(left * right.T))
    return trace, trace / float(np.linalg.norm(left @ right))
    # END SOLUTION


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model = run.model()
    cfg = model.config
    previous = HeadScores.of_run(run).previous_token     # as circuits.eigen weighs the trace
    scores = k_composition_scores(model, 1, 0)
    baseline = composition_baseline(cfg.d_model, cfg.d_head)
    engine = composition_scores(model)["K"][1, :, 0, :]              # [later head, earlier head]
    engine_trace, engine_normalised = prev_token_qk_trace(model, previous)
    right = np.shape(scores) == engine.shape and np.allclose(scores, engine, rtol=1e-6)
    if not right:
        print(f"WRONG: your K-composition scores differ from circuits.composition_scores"
              f"(model)['K'][1, :, 0, :]: yours {np.round(scores, 3).tolist()}, circuits' "
              f"{np.round(engine, 3).tolist()}")
    for b in range(cfg.n_heads):
        trace, normalised = prev_token_trace(model, 1, b, previous)
        print(f"head 1.{b}: K-composition with " + ", ".join(
            f"0.{a} {scores[b, a]:.2f}" for a in range(cfg.n_heads))
              + f" (random: {baseline:.2f});  Id x h_prev x W trace {trace:+.3g}, "
                f"normalised {normalised:+.2f}")
        if not np.allclose([trace, normalised], [engine_trace[1, b], engine_normalised[1, b]],
                           rtol=1e-6):
            right = False
            print(f"WRONG: circuits.prev_token_qk_trace gives head 1.{b} trace "
                  f"{engine_trace[1, b]:+.3g}, normalised {engine_normalised[1, b]:+.2f}")
    print("previous-token scores of layer 0:", np.round(previous[0], 2))
    if right:
        print("ok     your scores and traces are circuits' (composition_scores, "
              "prev_token_qk_trace)")
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    image = ax.imshow(scores, cmap="Reds", vmin=0)
    ax.set_xticks(range(cfg.n_heads), [f"0.{a}" for a in range(cfg.n_heads)])
    ax.set_yticks(range(cfg.n_heads), [f"1.{b}" for b in range(cfg.n_heads)])
    ax.set(xlabel="earlier head (writes)", ylabel="later head (keys read)",
           title=f"K-composition (random ~{baseline:.2f})")
    fig.colorbar(image)
    common.save(fig, "ex10_k_composition")
