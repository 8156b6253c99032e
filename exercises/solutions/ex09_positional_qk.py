"""Exercise 09: the positional QK circuit of a previous-token head.

Paper: Argument 5, "Summary of Reverse Engineering Induction Heads" (an induction head
needs "an earlier previous token head"), and method "(3) Head activation evaluators:
Previous token" (mean attention from each token to the one before it). Where does a
previous-token head's habit come from? In our models, from positions alone: with
Shortformer positions the query and key inputs are token + W_pos, and the
position-position term of the score, W_pos W_Q W_K^T W_pos^T, can by itself point every
query i at key i - 1.

What to compute:
  1. positional_qk_scores(model, layer): per head, the (P, P) position-position part of
     the attention score, W_pos W_Q[h] W_K[h]^T W_pos^T / sqrt(d_head) (biases left out).
  2. positional_pattern(scores): the causal softmax of each row (keys j <= query i).
  3. previous_token_share(pattern): per head, the mean over queries i >= 1 of
     pattern[h, i, i - 1]: how much of its attention the positions alone send back by one.

Shapes: positional_qk_scores -> (H, P, P) [head, query position, key position];
        positional_pattern (H, P, P) -> (H, P, P); previous_token_share -> (H,).

W_pos is model.params["pos_embed.W_pos"] (P, D); W_Q, W_K are (H, D, E).

The run tries your functions on a hand-built previous-token head first (20 positions,
d_head 30: its share is 1.00), then on the trained model, checked against circuits.

Run: python -m exercises.ex09_positional_qk    Check: make exercise N=9
Hints, one step at a time: python -m exercises.hint 9 (then --step 2)
"""
import numpy as np

from circuits import HeadScores, full_qk_circuit, induction_model
from exercises import common


def positional_qk_scores(model, layer):
    """-> (H, P, P): W_pos W_Q W_K^T W_pos^T / sqrt(E) for each head of `layer`."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
    # BEGIN SOLUTION: queries and keys from the positions alone, then their dot products
    # Hint 1: with positions alone, what stands where the token's embedding would? Keep the
    #   (P, P) product cheap: no (D, D) matrix is needed.
    # Hint 2: per head, the queries of the positions are W_pos W_Q[h] (P, E) and their keys
    #   W_pos W_K[h] (P, E); scores[h, i, j] is query i's vector dotted with key j's, over
    #   E, then divided by sqrt(d_head), as the attention scores are.
    # Hint 3: `queries = np.einsum("pd,hde->hpe", W_pos, p[a + "W_Q"])`, the same for the
    #   keys, then `queries @ keys.transpose(0, 2, 1) / np.sqrt(model.config.d_head)`.
    W_pos, a = p["pos_embed.W_pos"], f"blocks.{layer}.attn."
    queries = np.einsum("pd,hde->hpe", W_pos, p[a + "W_Q"])               # (H, P, E)
    keys = np.einsum("pd,hde->hpe", W_pos, p[a + "W_K"])                  # (H, P, E)
    return queries @ keys.transpose(0, 2, 1) / np.sqrt(model.config.d_head)
    # END SOLUTION


def positional_pattern(scores):
    """(H, P, P) scores -> (H, P, P) causal softmax over keys."""
    # BEGIN SOLUTION: mask the future, softmax each row
    # Hint 1: two steps: the keys after the query (j > i) must get no weight at all, then a
    #   softmax along each row. What keeps exp from overflowing on large scores?
    # Hint 2: add -inf above the diagonal (a query may attend to itself), subtract each
    #   row's largest score (the softmax does not change), exponentiate, and divide by each
    #   row's sum over its keys (the last axis).
    # Hint 3: `masked = scores + np.triu(np.full((P, P), -np.inf), k=1)`, then
    #   `masked = masked - masked.max(-1, keepdims=True)`, `weights = np.exp(masked)` and
    #   `weights / weights.sum(-1, keepdims=True)`.
    P = scores.shape[-1]
    masked = scores + np.triu(np.full((P, P), -np.inf), k=1)
    masked = masked - masked.max(-1, keepdims=True)
    weights = np.exp(masked)
    return weights / weights.sum(-1, keepdims=True)
    # END SOLUTION


def previous_token_share(pattern):
    """(H, P, P) -> (H,): mean over i >= 1 of pattern[h, i, i - 1]."""
    # BEGIN SOLUTION: the mean of the first sub-diagonal
    # Hint 1: where do the entries pattern[h, i, i - 1] lie in each (P, P) matrix?
    # Hint 2: on the first diagonal below the main one: P - 1 entries per head, one for each
    #   query from 1 on (query 0 has no previous token). numpy's diagonal takes an offset
    #   and the two axes; take the mean per head.
    # Hint 3: `np.diagonal(pattern, -1, axis1=-2, axis2=-1).mean(-1)`.
    return np.diagonal(pattern, -1, axis1=-2, axis2=-1).mean(-1)
    # END SOLUTION


if __name__ == "__main__":
    plt = common.pyplot()
    handmade = induction_model(d_vocab=30, n_ctx=20)     # P 20 positions, d_head 30
    share = previous_token_share(positional_pattern(positional_qk_scores(handmade, 0)))
    print(f"hand-built head 0.0, built to attend to i - 1 by position: {share[0]:.2f} of its "
          f"attention goes to i-1 from positions alone (it should be 1.00)")
    run = common.trained_run()
    model = run.model()
    empirical = HeadScores.of_run(run).previous_token                  # on real tokens
    H = model.config.n_heads
    fig, axes = plt.subplots(1, H, figsize=(4 * H, 4), squeeze=False)
    for layer in range(model.config.n_layers):
        scores = positional_qk_scores(model, layer)
        library = full_qk_circuit(model, layer, "pos", "pos").AB / np.sqrt(model.config.d_head)
        if not np.allclose(scores, library, rtol=1e-6, atol=1e-8):
            print(f"WRONG: layer {layer}'s positional scores differ from circuits.full_qk_circuit"
                  f"'s (divided by sqrt(d_head)) by up to {np.abs(scores - library).max():.3g}")
        pattern = positional_pattern(scores)
        share = previous_token_share(pattern)
        for head in range(H):
            print(f"head {layer}.{head}: from positions alone {share[head]:.2f} of the attention "
                  f"goes to i-1; measured on the eval set {empirical[layer, head]:.2f}")
            if layer == 0:
                ax = axes[0, head]
                ax.imshow(pattern[head, :24, :24], cmap="Blues", vmin=0, vmax=1)
                ax.set(title=f"head 0.{head}: positional pattern ({share[head]:.2f} on i-1)",
                       xlabel="key position", ylabel="query position")
    common.save(fig, "ex09_positional_qk")
