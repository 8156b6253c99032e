"""Curves over training, in one place: smoothing, the snapshots to evaluate, the ICL score of
each snapshot, the prefix-matching rise and the ICL window read from them, and the paper's
statistics of a phase change (phase_statistics), which `make train-2l` and the Model
Analysis Table both print.

S snapshots, T = n_ctx, L layers, H heads; tokens (S,) the training tokens of each snapshot.
Two windows mark the phase change (PhaseStatistics and ModelAnalysis keep the same names):
  prefix_rise    where the best layer>=1 head's prefix matching makes 10%..90% of its rise
                 (rise_window of best_later_head)
  icl_window     where the ICL score falls fastest (the Model Analysis Table's window)
"""
from dataclasses import dataclass

import numpy as np

from circuits.icl import context_indices, index_window

MIN_FALL = 0.05       # nats: an ICL score that falls less than this has no phase change
RATE_FRACTION = 0.25  # the window: where the ICL score falls at >= 1/4 of its steepest rate
NOISE_FACTOR = 2.0    # ... and falls by at least twice its measurement noise
BUMP_SMOOTHING = 5    # measurements the eval loss is averaged over before its convexity is read


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


# the ICL score's index pairs (early, late) as fractions of n_ctx, besides the default one:
# what the report's sensitivity row draws and its index-pair table lists
OTHER_INDEX_PAIRS = ((0.05, 0.5), (0.1, 0.98), (0.25, 0.98), (0.02, 0.25))


def index_pairs(n_ctx):
    """[(early, late)] context indices: the default pair (context_indices), then the others."""
    return [context_indices(n_ctx)] + [(max(1, round(a * n_ctx)), min(n_ctx - 1, round(b * n_ctx)))
                                       for a, b in OTHER_INDEX_PAIRS]


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


def prefix_rise(tokens, prefix):
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


def loss_rise_above_minimum(tokens, eval_loss, window):
    """Within the window, the largest rise of eval loss above its best value so far (>= 0):
    an outright increase of the loss, which the paper's bump (loss_bump) does not need."""
    if window is None:
        return float("nan")
    inside = (tokens >= window[0]) & (tokens <= window[1])
    best = np.minimum.accumulate(eval_loss)
    return float(max(0.0, (eval_loss - best)[inside].max())) if inside.any() else 0.0


def convex_minorant(x, y):
    """The greatest convex minorant of the points (x, y), x increasing: the lower convex
    hull, evaluated at every x -> (n,). A convex curve is its own minorant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    hull = []
    for i in range(len(x)):
        # drop the last hull point while it lies on or above the chord to the new point
        while len(hull) >= 2 and ((y[hull[-1]] - y[hull[-2]]) * (x[i] - x[hull[-2]])
                                  >= (y[i] - y[hull[-2]]) * (x[hull[-1]] - x[hull[-2]])):
            hull.pop()
        hull.append(i)
    return np.interp(x, x[hull], y[hull])


@dataclass(frozen=True)
class LossBump:
    """The paper's loss bump (Argument 1): "the only place in training where the loss is not
    convex (monotonically decreasing in slope)", "a period of visibly steeper improvement
    than the parts of the curve before and after". Read on the eval loss averaged over
    BUMP_SMOOTHING measurements (only where the whole average fits, so the ends are not
    bent by a shorter one): its largest gap above its greatest convex minorant. A curve
    that falls steeply for a while after falling slowly lies above the chord across that
    stretch; a convex curve has no gap at all. Noise makes gaps too: `noise` is the gap
    that noise alone makes on this curve, the 99th percentile over NULL_DRAWS draws of the
    largest gap of the minorant plus Gaussian noise of the curve's own measurement noise
    `sigma` (from its second differences: 1.4826 x their median absolute deviation / sqrt(6),
    which the strong curvature of the first few measurements does not inflate)."""
    size: float      # nats, the largest gap
    at: float        # training tokens where it is
    sigma: float     # nats, the measurement noise of one eval-loss reading
    noise: float     # nats, the largest gap that noise alone makes (99th percentile)
    exceeds: bool    # size > noise


NULL_DRAWS = 200


def convexity_gap(x, y, k):
    """The k-point moving average of y (where it fits) and its gap above its convex minorant
    -> (x of the average (n,), average (n,), gap (n,))."""
    half = k // 2
    smooth = np.convolve(y, np.ones(k) / k, "valid")
    x = x[half: len(x) - half]
    return x, smooth, smooth - convex_minorant(x, smooth)


def curve_noise(y):
    """The noise of single readings of a smooth curve (S,), from its second differences
    (each the sum of 6 readings' variances): robust to a few strongly curved points."""
    d2 = np.diff(np.asarray(y, dtype=float), 2)
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / np.sqrt(6))


def loss_bump(tokens, eval_loss, k=BUMP_SMOOTHING):
    """-> LossBump of an eval-loss curve (S,) over training tokens (S,); NaNs with fewer
    than 2k + 2 measurements."""
    tokens, eval_loss = np.asarray(tokens, dtype=float), np.asarray(eval_loss, dtype=float)
    if len(eval_loss) < 2 * k + 2:
        return LossBump(*(float("nan"),) * 4, False)
    x, smooth, gap = convexity_gap(tokens, eval_loss, k)
    sigma = curve_noise(eval_loss)
    convex = smooth - gap
    rng = np.random.default_rng(0)
    null = [convexity_gap(x, convex + rng.normal(0, sigma, len(x)), k)[2].max()
            for _ in range(NULL_DRAWS)]
    noise = float(np.percentile(null, 99))
    i = int(np.argmax(gap))
    return LossBump(float(gap[i]), float(x[i]), sigma, noise, bool(gap[i] > noise))


def overlap_share(a, b):
    """How far two intervals (start, end) coincide: the length they share over the shorter
    one's length (1 when one lies inside the other; a zero-length one counts 1 inside the
    other, 0 outside); NaN when either is None."""
    if a is None or b is None:
        return float("nan")
    shorter = min(a[1] - a[0], b[1] - b[0])
    shared = min(a[1], b[1]) - max(a[0], b[0])
    if shorter <= 0:
        return float(shared >= 0)
    return max(0.0, shared) / shorter


@dataclass(frozen=True)
class PhaseStatistics:
    """The paper's statistics of one run's phase change (Argument 1), from its curves; windows
    are (start, end) training tokens or None, ICL scores in nats (negative: in-context
    learning), shares of the ICL score's whole fall from the first measurement to the last."""
    prefix_rise: tuple           # prefix matching's 10%->90% rise (prefix_rise)
    icl_window: tuple            # the ICL score's steepest fall near prefix_rise (icl_window)
    icl_window_anywhere: tuple   # the same rule without the restriction to near prefix_rise
    icl_start: float             # the ICL score at the first measurement and at the last
    icl_final: float
    icl_before: float            # at icl_window's start and end, averaged over 3 measurements
    icl_after: float             #   (NaN without a window)
    share_in_window: float       # (icl_before - icl_after) / (icl_start - icl_final): the paper's
                                 #   "over 75% of final in-context learning forms in this window"
    share_in_rise: float         # the same across prefix_rise itself (with rise_ratio and
                                 #   rise_share: how sharp the phase change is)
    change_after: float          # icl_final - icl_after, nats: 0 when "constant for the rest of
                                 #   training"; negative when it goes on falling
    share_after: float           # the same as a share of the whole fall
    co_occurrence: float         # overlap_share of icl_window_anywhere and prefix_rise: 1 when
                                 #   one lies inside the other, 0 when they are apart
    bump: LossBump               # the paper's loss bump, over the whole run
    rise_above_minimum: float    # the largest rise of eval loss above its running minimum
                                 #   inside icl_window (an outright increase; NaN without one)
    run_tokens: float = float("nan")   # the last measurement's training tokens

    @property
    def rise_ratio(self):
        return rise_ratio(self.prefix_rise)

    @property
    def rise_share(self):
        return rise_share(self.prefix_rise, self.run_tokens)


def rise_ratio(rise):
    """How sharp a rise (start, end) in training tokens is: end over start (NaN: none)."""
    return rise[1] / rise[0] if rise and rise[0] else float("nan")


def rise_share(rise, run_tokens):
    """A rise's length as a share of a run of run_tokens (NaN: none)."""
    return (rise[1] - rise[0]) / run_tokens if rise else float("nan")


def phase_statistics(tokens, icl, eval_loss, prefix_tokens, prefix):
    """-> PhaseStatistics of a run: tokens (K,) the measurements' training tokens, icl (K,)
    their ICL scores and eval_loss (K,) their mean eval losses; prefix (S, L, H) every head's
    prefix matching at the snapshots' training tokens prefix_tokens (S,)."""
    tokens = np.asarray(tokens, dtype=float)
    icl = np.asarray(icl, dtype=float)
    rise = prefix_rise(np.asarray(prefix_tokens, dtype=float), prefix)
    window = icl_window(tokens, icl, near=rise)
    before, after = across(tokens, icl, window) or (float("nan"), float("nan"))
    rise_before, rise_after = across(tokens, icl, rise) or (float("nan"), float("nan"))
    start, final = float(icl[0]), float(icl[-1])
    fall = start - final
    has_fall = fall >= MIN_FALL
    share = lambda change: change / fall if has_fall else float("nan")   # noqa: E731
    anywhere = icl_window(tokens, icl)
    return PhaseStatistics(
        prefix_rise=rise, icl_window=window, icl_window_anywhere=anywhere, icl_start=start,
        icl_final=final, icl_before=before, icl_after=after,
        share_in_window=share(before - after), share_in_rise=share(rise_before - rise_after),
        change_after=final - after,
        share_after=share(after - final), co_occurrence=overlap_share(anywhere, rise),
        bump=loss_bump(tokens, eval_loss),
        rise_above_minimum=loss_rise_above_minimum(tokens, np.asarray(eval_loss, float), window),
        run_tokens=float(tokens[-1]) if len(tokens) else float("nan"))
