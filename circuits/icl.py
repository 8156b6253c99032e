"""The in-context-learning score (paper, "In-context learning score"): the loss at a late
context index minus the loss at an early one, on per-token losses (N, T-1). Negative: later
tokens are easier, the model learns from its context. The head ablations (circuits.ablation)
read their change in it; experiments read it over training.

losses[n, i] is the loss of predicting token i+1 of sequence n from tokens 0..i, so the loss
"at context index i" (the i-th token, predicted from i earlier ones) is losses[:, i-1].
"""


def context_indices(n_ctx):
    """The paper's early and late context indices, 50 and 500 of 512, scaled to n_ctx."""
    return max(1, round(50 / 512 * n_ctx)), min(n_ctx - 1, round(500 / 512 * n_ctx))


def index_window(n_ctx, index, half_window=None):
    """The columns of per-token losses (..., T-1) read as the loss at context index `index`:
    indices index +- half_window (default n_ctx/64, so one index's token noise does not
    dominate), clipped to 1..n_ctx-1. -> a slice."""
    w = max(1, round(n_ctx / 64)) if half_window is None else half_window
    return slice(max(1, index - w) - 1, min(n_ctx - 1, index + w))


def loss_at_index(losses, index, half_window=None):
    """Mean loss at context index `index`, averaged over sequences (N, T-1) and over the
    index_window around it."""
    return float(losses[:, index_window(losses.shape[1] + 1, index, half_window)].mean())


def icl_score(losses, early=None, late=None, half_window=None):
    """In-context learning score: loss at the late index minus loss at the early index
    (negative = later tokens are easier). losses (N, T-1)."""
    n_ctx = losses.shape[1] + 1
    default_early, default_late = context_indices(n_ctx)
    return (loss_at_index(losses, late or default_late, half_window)
            - loss_at_index(losses, early or default_early, half_window))
