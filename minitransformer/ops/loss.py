"""Next-token cross-entropy, fused with the softmax so the backward is softmax - onehot."""
from ..backend import array_module


def _log_softmax_at_targets(logits, tokens):
    """Predict tokens[:,1:] from logits[:,:-1]: -> per-token loss (B,T-1), probabilities (B,T-1,V)."""
    xp = array_module(logits)
    pred = logits[:, :-1]                                         # (B,T-1,V)
    shifted = pred - pred.max(-1, keepdims=True)
    exp = xp.exp(shifted)
    total = exp.sum(-1, keepdims=True)
    targets = tokens[:, 1:]
    picked = xp.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
    return xp.log(total[..., 0]) - picked, exp / total


def per_token_cross_entropy(logits, tokens):
    """logits (B,T,V), tokens (B,T) -> loss of predicting each next token (B,T-1).
    The numbers of _log_softmax_at_targets's losses, to the bit (tests/test_lean_forward.py),
    without its probabilities: a loss alone needs one (B,T-1,V) array, not three."""
    xp = array_module(logits)
    pred = logits[:, :-1]                                         # (B,T-1,V)
    shifted = pred - pred.max(-1, keepdims=True)
    picked = xp.take_along_axis(shifted, tokens[:, 1:, None], axis=-1)[..., 0]
    total = xp.exp(shifted, out=shifted).sum(-1)                  # (B,T-1)
    return xp.log(total) - picked


def cross_entropy_forward(logits, tokens):
    """logits (B,T,V), tokens (B,T) -> mean next-token loss (scalar array), cache."""
    losses, probs = _log_softmax_at_targets(logits, tokens)
    return losses.mean(), (probs, tokens, logits.shape)


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (B,T,V); the last position predicts nothing, so gets zero."""
    probs, tokens, shape = cache
    xp = array_module(probs)
    B, T, V = shape
    dpred = probs.copy()
    rows = dpred.reshape(-1, V)
    rows[xp.arange(rows.shape[0]), tokens[:, 1:].reshape(-1)] -= 1.0
    dpred *= dloss / (B * (T - 1))
    dlogits = xp.zeros(shape, dtype=probs.dtype)
    dlogits[:, :-1] = dpred
    return dlogits
