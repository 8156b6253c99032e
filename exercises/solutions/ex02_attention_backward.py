"""Exercise 02: causal attention backward, one head.

Paper: "Key Concepts: Induction Heads" (an induction head is one attention head; its
pattern decides where it looks, its values what it copies). Here you differentiate one.

What to compute: the backward pass of one causal attention head (row vectors, x @ W),

    q = x W_Q   k = x W_K   v = x W_V                               (T,E) each
    scores = q k^T / sqrt(E), -inf above the diagonal (no looking ahead)   (T,T)
    pattern = softmax(scores) over each row                         (T,T)
    z = pattern v                                                   (T,E)
    out = z W_O                                                     (T,D)

given dout = dLoss/dout, return dx, dW_Q, dW_K, dW_V, dW_O.

Shapes: dout (T,D); cache from attention_head_forward ->
        dx (T,D), dW_Q, dW_K, dW_V (D,E), dW_O (E,D)

Undo the forward line by line, last line first, and write the line you invert above each
step ("forward was: z = pattern v, so: dpattern = dz v^T, dv = pattern^T dz").

Run: python -m exercises.ex02_attention_backward     Check: make exercise N=2
Hints, one step at a time: python -m exercises.hint 2 (then --step 2)
"""
import numpy as np

from exercises import common


def attention_head_forward(x, W_Q, W_K, W_V, W_O):
    """x (T,D); W_Q, W_K, W_V (D,E); W_O (E,D) -> out (T,D), cache (given)."""
    T, E = x.shape[0], W_Q.shape[1]
    q, k, v = x @ W_Q, x @ W_K, x @ W_V                          # (T,E) each
    scores = q @ k.T / np.sqrt(E)                                # (T,T)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    pattern = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    z = pattern @ v                                              # (T,E)
    return z @ W_O, (x, W_Q, W_K, W_V, W_O, q, k, v, pattern, z)


def attention_head_backward(dout, cache):
    """dout (T,D) -> dx (T,D), dW_Q (D,E), dW_K (D,E), dW_V (D,E), dW_O (E,D)."""
    x, W_Q, W_K, W_V, W_O, q, k, v, pattern, z = cache
    # BEGIN SOLUTION: dx, dW_Q, dW_K, dW_V, dW_O, undoing the forward from its last line
    # Hint 1: go up from the last line of the forward, one line at a time, and write the
    #   line you undo above each step. Two steps need care: the softmax, and the last one,
    #   where x comes back.
    # Hint 2: for a product `y = a b`, `da = dy b^T` and `db = a^T dy`: each gradient has the
    #   shape of what it is the gradient of. The softmax: each p_ij depends on every score of
    #   its row, so the gradient at s_ij has p_ij's own term and a term shared by the whole
    #   row (masked entries need no care: their p_ij is exactly 0). The scores' 1/sqrt(E)
    #   goes into dq and dk. x is read three times (by q, k and v): dx is a sum of three
    #   routes.
    # Hint 3: `dW_O = z.T @ dout`, `dz = dout @ W_O.T`, `dpattern = dz @ v.T`, `dv =
    #   pattern.T @ dz`; the softmax: `dscores = pattern * (dpattern - (dpattern *
    #   pattern).sum(-1, keepdims=True))`; `dq = dscores @ k / np.sqrt(E)`, `dk = dscores.T
    #   @ q / np.sqrt(E)`; `dx = dq @ W_Q.T + dk @ W_K.T + dv @ W_V.T`, and each weight's
    #   gradient is `x.T` times its own: `x.T @ dq`, `x.T @ dk`, `x.T @ dv`.
    # forward was: out = z W_O
    dW_O = z.T @ dout                                            # (E,D)
    dz = dout @ W_O.T                                            # (T,E)
    # forward was: z = pattern v
    dpattern = dz @ v.T                                          # (T,T)
    dv = pattern.T @ dz                                          # (T,E)
    # forward was: pattern = softmax(scores), row by row
    dscores = pattern * (dpattern - (dpattern * pattern).sum(-1, keepdims=True))
    # forward was: scores = q k^T / sqrt(E)
    scale = 1.0 / np.sqrt(q.shape[1])
    dq = dscores @ k * scale                                     # (T,E)
    dk = dscores.T @ q * scale                                   # (T,E)
    # forward was: q = x W_Q, k = x W_K, v = x W_V: x feeds all three
    dx = dq @ W_Q.T + dk @ W_K.T + dv @ W_V.T
    return dx, x.T @ dq, x.T @ dk, x.T @ dv, dW_O
    # END SOLUTION


def gradient_check(seed=0, T=7, D=10, E=4):
    """Each gradient against central differences -> {name: max relative error}."""
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(size=(T, D)), "W_Q": rng.normal(size=(D, E)),
              "W_K": rng.normal(size=(D, E)), "W_V": rng.normal(size=(D, E)),
              "W_O": rng.normal(size=(E, D))}
    dout = rng.normal(size=(T, D))
    return common.gradient_check(attention_head_forward, attention_head_backward, inputs, dout)


if __name__ == "__main__":
    errors = gradient_check()
    common.print_gradient_check(errors)
    wrong = [f"d{name}" for name, error in errors.items() if not error < 1e-6]
    if wrong:
        print(f"WRONG: {', '.join(wrong)} differ{'s' * (len(wrong) == 1)} from finite "
              f"differences (T 7, d_model 10, d_head 4); make exercise N=2 says where")
    else:
        print("ok     every gradient matches finite differences (T 7, d_model 10, d_head 4)")
