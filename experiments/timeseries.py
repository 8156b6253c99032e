"""Curves over training, in one place: smoothing, the snapshots to evaluate, the ICL score of
each snapshot, the phase-change windows and onsets read from them.

S snapshots, T = n_ctx, L layers, H heads; tokens (S,) the training tokens of each snapshot.
Two windows mark the phase change:
  prefix_onset   where the best layer>=1 head's prefix matching makes 10%..90% of its rise
                 (rise_window of best_later_head)
  icl_window     where the ICL score falls fastest (the Model Analysis Table's window)
"""
import numpy as np

from circuits.ablation import context_indices, index_window

MIN_FALL = 0.05       # nats: an ICL score that falls less than this has no phase change
RATE_FRACTION = 0.25  # the window: where the ICL score falls at >= 1/4 of its steepest rate
NOISE_FACTOR = 2.0    # ... and falls by at least twice its measurement noise


def moving_average(y, k):
    """Centred moving average over k points (fewer at the ends)."""
    y = np.asarray(y, dtype=float)
    half = k // 2
    return np.array([y[max(0, i - half): i + half + 1].mean() for i in range(len(y))])


def evaluated_steps(steps, points):
    """About `points` snapshot steps, evenly spread, first and last included."""
    index = np.unique(np.round(np.linspace(0, len(steps) - 1, min(points, len(steps)))).astype(int))
    return steps[index]


def icl_curve(ctx_loss, early=None, late=None, half_window=None):
    """ICL score of each snapshot from its context-index average losses (S, T-1): the same
    number as circuits.icl_score on the (N, T-1) losses, every sequence having every index."""
    n_ctx = ctx_loss.shape[1] + 1
    e, l = context_indices(n_ctx)

    def at(i):
        return ctx_loss[:, index_window(n_ctx, i, half_window)].mean(1)
    return at(late or l) - at(early or e)


def rise_window(x, y, min_rise=0.1, lo=0.1, hi=0.9):
    """Where a curve makes its rise: from the first x at which its running maximum has made
    `lo` of its total rise to the first at which it has made `hi`. None when the total rise
    is under min_rise (no phase change)."""
    y = np.asarray(y, dtype=float)
    peak = np.maximum.accumulate(y)
    rise = peak[-1] - y[0]
    if rise < min_rise:
        return None
    start = int(np.argmax(peak >= y[0] + lo * rise))
    end = int(np.argmax(peak >= y[0] + hi * rise))
    return float(x[start]), float(x[end])


def best_later_head(scores):
    """The best head's score in each snapshot among the heads of layer >= 1, where an
    induction head can form (any head in a 1-layer model): (S, L, H) -> (S,)."""
    later = scores[:, 1:] if scores.shape[1] > 1 else scores
    return later.reshape(len(scores), -1).max(1)


def prefix_onset(tokens, prefix):
    """Where the best layer>=1 head's prefix matching (S, L, H) makes 10%..90% of its rise
    -> (start, end) tokens, or None if it rises < 0.1."""
    return rise_window(tokens, best_later_head(prefix))


def icl_window(tokens, icl, near=None, min_fall=MIN_FALL, fraction=RATE_FRACTION,
               noise_factor=NOISE_FACTOR):
    """The phase-change window from the derivative of the ICL score: smooth the score over
    5 snapshots (3 when there are fewer than 20); around its steepest fall, the contiguous
    snapshots where it falls at >= `fraction` of that rate. near=(start, end) tokens, the
    prefix-matching rise: look for the steepest fall there, widened by a tenth of training
    either side (a deep model's early ICL score is noisy). None when the smoothed score falls
    over the window by less than min_fall, or less than noise_factor x the measurement noise
    (the spread of the score about its smoothed curve)."""
    tokens = np.asarray(tokens, dtype=float)
    icl = np.asarray(icl, dtype=float)
    y = moving_average(icl, 5 if len(icl) >= 20 else 3)
    noise = float(np.std(icl - y))
    rate = -np.diff(y) / np.diff(tokens)                                 # fall per token
    allowed = np.ones(len(rate), bool)
    if near is not None:
        pad = 0.1 * (tokens[-1] - tokens[0])
        allowed = (tokens[1:] >= near[0] - pad) & (tokens[:-1] <= near[1] + pad)
    if not (allowed & (rate > 0)).any():
        return None
    peak = int(np.argmax(np.where(allowed, rate, -np.inf)))
    lo = hi = peak
    while lo > 0 and rate[lo - 1] >= fraction * rate[peak]:
        lo -= 1
    while hi < len(rate) - 1 and rate[hi + 1] >= fraction * rate[peak]:
        hi += 1
    if y[lo] - y[hi + 1] < max(min_fall, noise_factor * noise):
        return None
    return float(tokens[lo]), float(tokens[hi + 1])


def across(tokens, y, window, k=3):
    """A curve y (S,) smoothed over k measurements, just before and just after a window:
    (at the last point at or before its start, at the first at or after its end), or None
    without a window or without points on both sides."""
    if window is None:
        return None
    before = np.flatnonzero(tokens <= window[0])
    after = np.flatnonzero(tokens >= window[1])
    if not (len(before) and len(after)):
        return None
    smooth = moving_average(y, k)
    return float(smooth[before[-1]]), float(smooth[after[0]])


def loss_bump(tokens, eval_loss, window):
    """Within the window, the largest rise of eval loss above its best value so far (>= 0)."""
    if window is None:
        return float("nan")
    inside = (tokens >= window[0]) & (tokens <= window[1])
    best = np.minimum.accumulate(eval_loss)
    return float(max(0.0, (eval_loss - best)[inside].max())) if inside.any() else 0.0
