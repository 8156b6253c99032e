"""The numbers of the Model Analysis Table, from each run's measurements (experiments.measure):
phase-change windows, ICL scores, the before-and-after vector, the joint PCA of a family,
Argument 3's ablation shares, Argument 4's template attention and the coloured passage.

A model here is a dict: name, family, run (minitransformer.runs.Run), m (its measurements),
and what analyse() adds (icl, window, summary numbers).
"""
import numpy as np

from circuits import context_indices
from minitransformer.data import BOS, template_corpus

from .phase_change import _moving_average, rise_window

MIN_FALL = 0.05       # nats: an ICL score that falls less than this has no phase change
RATE_FRACTION = 0.25  # the window: where the ICL score falls at >= 1/4 of its steepest rate
NOISE_FACTOR = 2.0    # ... and falls by at least twice its measurement noise


def icl_curve(ctx_loss, early=None, late=None, half_window=None):
    """ICL score of each snapshot from its context-index average losses (S, T-1): the same
    number as icl_score on the (N, T-1) losses, every sequence having every index."""
    n_ctx = ctx_loss.shape[1] + 1
    e, l = context_indices(n_ctx)
    early, late = early or e, late or l
    w = max(1, round(n_ctx / 64)) if half_window is None else half_window

    def at(i):
        return ctx_loss[:, max(1, i - w) - 1: min(n_ctx - 1, i + w)].mean(1)
    return at(late) - at(early)


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
    y = _moving_average(icl, 5 if len(icl) >= 20 else 3)
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


def prefix_onset(tokens, prefix, n_layers):
    """Where the best layer>=1 head's prefix matching makes 10%..90% of its rise (None if
    it rises < 0.1); in a 1-layer model, any head."""
    later = prefix[:, 1:] if n_layers > 1 else prefix
    return rise_window(tokens, later.reshape(len(tokens), -1).max(1))


def loss_bump(tokens, eval_loss, window):
    """Within the window, the largest rise of eval loss above its best value so far (>= 0)."""
    if window is None:
        return float("nan")
    inside = (tokens >= window[0]) & (tokens <= window[1])
    best = np.minimum.accumulate(eval_loss)
    return float(max(0.0, (eval_loss - best)[inside].max())) if inside.any() else 0.0


def before_after(model):
    """The snapshots bounding the phase change (first and last when there is none) and the
    unit before-and-after vector of random-token losses on the ablation sequences, pointing
    from after to before: an ablation's change in loss projected onto it is positive when
    removing the head takes the losses back toward where they were before the phase change."""
    m, tokens = model["m"], model["m"]["tokens"]
    window = model["window"]
    if window is None:
        i, j = 0, len(tokens) - 1
    else:
        i, j = int(np.searchsorted(tokens, window[0])), int(np.searchsorted(tokens, window[1]))
    n = m["ablation_random"].shape[-1]
    v = m["random_loss"][i, :n].astype(float) - m["random_loss"][j, :n]
    return i, j, v / max(np.linalg.norm(v), 1e-12)


def analyse(model):
    """Add the ICL curve, windows and summary numbers to a model dict (in place) -> it."""
    m = model["m"]
    tokens = m["tokens"].astype(float)
    icl = icl_curve(m["ctx_loss"])
    eval_loss = m["ctx_loss"].mean(1)
    onset = prefix_onset(tokens, m["prefix"], int(m["n_layers"]))
    window = icl_window(tokens, icl, near=onset)
    smooth = _moving_average(icl, 3)
    before = after = float("nan")
    if window is not None:
        before = float(smooth[np.searchsorted(tokens, window[0])])
        after = float(smooth[np.searchsorted(tokens, window[1])])
    classes = m["classes"]
    induction = [f"{l}.{h}" for l, h in zip(*np.nonzero(classes == "induction"))]
    model.update(icl=icl, eval_loss=eval_loss, window=window, icl_before=before, icl_after=after,
                 onset=onset,
                 bump=loss_bump(tokens, eval_loss, window), induction_heads=induction)
    model["ablation_tokens"] = m["tokens"][np.searchsorted(m["steps"], m["ablation_steps"])]
    i, j, u = before_after(model)
    model["attribution"] = m["ablation_random"] @ u               # (A, L*H)
    model["before_after_steps"] = (i, j)
    clean = float(m["clean_icl_ablate"])
    model["shares"] = {str(name): float(change) / -clean if clean < 0 else float("nan")
                       for name, change in zip(m["group_names"], m["group_icl"])}
    return model


def summary_line(model):
    w = model["window"]
    where = (f"window {w[0] / 1e6:.2f}M-{w[1] / 1e6:.2f}M tokens, ICL {model['icl_before']:+.3f} -> "
             f"{model['icl_after']:+.3f}, loss bump {model['bump']:.3f}" if w else "no phase change")
    onset = model["onset"]
    shares = ", ".join(f"{k} {v:.0%}" for k, v in model["shares"].items()) or "nothing"
    return (f"{model['name']:>13}: {where}; final ICL {model['icl'][-1]:+.3f}; prefix-matching "
            f"onset {'%.2fM' % (onset[0] / 1e6) if onset else 'none'}; induction heads "
            f"{', '.join(model['induction_heads']) or 'none'}; ICL removed by ablating {shares}")


def joint_pca(models, k=2):
    """PCA of the random-token loss vectors of every snapshot of every model, fitted jointly
    -> ({name: (S, k) coordinates}, explained variance ratios (k,))."""
    stacked = np.concatenate([m["m"]["random_loss"].astype(float) for m in models])
    mean = stacked.mean(0)
    _, s, vt = np.linalg.svd(stacked - mean, full_matrices=False)
    ratio = s[:k] ** 2 / (s ** 2).sum()
    return {m["name"]: (m["m"]["random_loss"] - mean) @ vt[:k].T for m in models}, ratio


def share_table(models):
    """Argument 3: per model, the share of its final ICL score removed by ablating the
    induction heads together and all other heads together."""
    return [(m["name"], m["shares"].get("induction heads", float("nan")),
             m["shares"].get("all other heads", float("nan")), float(m["m"]["clean_icl_ablate"]))
            for m in models]


# ---- the coloured passage (the paper's Harry Potter figure) ----------------------------------

PASSAGE = ("This is the house that Jack built. This is the malt that lay in the house that Jack "
           "built. This is the rat that ate the malt that lay in the house that Jack built. This "
           "is the cat that killed the rat that ate the malt that lay in the house that Jack built.")


def passage_losses(run, steps, text=PASSAGE):
    """Per-token losses of `text` (bytes, after BOS) at each snapshot step -> (bytes, (K, n))."""
    data = text.encode()[: run.config.n_ctx - 1]
    tokens = np.concatenate([[0], np.frombuffer(data, np.uint8)]).astype(np.int64)
    return data, np.stack([run.model(s).per_token_loss(tokens[None])[0] for s in steps])


# ---- Argument 4: attention from ':' to earlier lines of the same template --------------------

def template_lines(tokens):
    """Lines 'category: word' of one token window -> [(category, start, end, doc)], end
    exclusive (after the newline); doc counts BOS tokens, so lines of different documents
    (different bindings) are never compared."""
    lines, start, doc = [], 0, 0
    for i, b in enumerate(tokens):
        if b == BOS:
            doc, start = doc + 1, i + 1
        elif b == ord("\n"):
            line = bytes(tokens[start:i + 1].astype(np.uint8))
            if b": " in line:
                lines.append((line.split(b":")[0], start, i + 1, doc))
            start = i + 1
    return lines


def template_attention(run, heads, n_windows=16):
    """Argument 4: for each head (layer, head), the mean share of attention from each ':'
    (and from the space after it, the byte that predicts the word) to the earlier lines of
    the same category in the same document, over lines that have one; beside the share a
    uniform head would give. Eval windows of the template corpus, starting at documents.
    -> ({head: (share from ':', share from ': ')}, (uniform from ':', from ': '), count)."""
    stream = template_corpus().eval
    n = run.config.n_ctx
    starts = [s for s in np.flatnonzero(stream == BOS) if s + n <= len(stream)][:n_windows * 4:4]
    tokens = np.stack([stream[s:s + n] for s in starts]).astype(np.int64)
    _, cache = run.model().run_with_cache(tokens)
    shares, uniform = {h: [] for h in heads}, []
    for w, row in enumerate(tokens):
        lines = template_lines(row)
        for k, (cat, a, b, doc) in enumerate(lines):
            same = [(x, y) for c, x, y, d in lines[:k] if c == cat and d == doc]
            if not same:
                continue
            mask = np.zeros(n, bool)
            for x, y in same:
                mask[x:y] = True
            colon = a + len(cat)
            queries = (colon, colon + 1)
            uniform.append([mask[: q + 1].mean() for q in queries])
            for l, h in heads:
                pattern = cache[f"blocks.{l}.attn.hook_pattern"][w, h]
                shares[(l, h)].append([float(pattern[q, : q + 1][mask[: q + 1]].sum()) for q in queries])
    mean = {h: tuple(np.mean(v, 0)) if v else (float("nan"),) * 2 for h, v in shares.items()}
    return mean, tuple(np.mean(uniform, 0)) if uniform else (float("nan"),) * 2, len(uniform)
