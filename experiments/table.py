"""The numbers of the Model Analysis Table, from each run's measurements (experiments.measure):
phase-change windows, ICL scores, the before-and-after vector, the joint PCA of a family,
Argument 3's ablation shares, Argument 4's template attention and the coloured passage.
One model of the table is a ModelAnalysis (analyse()); the curves' helpers are in
experiments.timeseries.
"""
from dataclasses import dataclass

import numpy as np

from minitransformer.data import BOS, template_corpus
from minitransformer.tokenizer import BYTES
from minitransformer.runs import Run

from .measure import Measurements
from .timeseries import MIN_FALL, PhaseStatistics, icl_curve, phase_statistics


@dataclass(frozen=True)
class HeadAblations:
    """Argument 3, head by head (the paper's per-head ablations over training, read at two
    snapshots): the ICL window's end and the last snapshot. L*H heads, head l.h at l*H + h;
    NaN where there is no window (or no in-context learning to remove)."""
    tokens: tuple                 # training tokens of (the window's end, the last snapshot)
    share: np.ndarray             # (2, L*H) share of the ICL score each head's ablation removes
    projection: np.ndarray        # (2, L*H) its ablation projected on the before-and-after vector


@dataclass(frozen=True)
class ModelAnalysis:
    """One model (column) of the Model Analysis Table, one seed. S snapshots, A ablated
    snapshots, L layers, H heads; windows are (start, end) training tokens or None."""
    name: str
    family: str                   # "attn-only", "mlp", "layernorm", "smeared" or "template"
    control: str                  # the name of its control model ("" if none)
    seed: int                     # TrainConfig.seed of the run
    run: Run
    measurements: Measurements    # experiments.measure's record of the run
    icl: np.ndarray               # (S,) ICL score of each snapshot
    eval_loss: np.ndarray         # (S,) mean eval loss
    stats: PhaseStatistics        # the paper's statistics of the phase change (timeseries)
    induction_heads: list         # ["l.h"] of the heads classed induction at the last snapshot
    ablation_tokens: np.ndarray   # (A,) training tokens of the ablated snapshots
    attribution: np.ndarray       # (A, L*H) each ablation projected on the before-and-after vector
    before_after_steps: tuple     # (i, j): indices of the snapshots bounding the phase change
    shares: dict                  # {head set: share of the final ICL score its ablation removes}
    heads: HeadAblations          # each head's ablation at the window's end and at the last

    @property
    def icl_window(self):
        """The phase-change window: the ICL score's steepest fall near the prefix rise."""
        return self.stats.icl_window

    @property
    def prefix_rise(self):
        """Prefix matching's 10%->90% rise."""
        return self.stats.prefix_rise


def before_after(m, window):
    """The snapshots bounding the phase change (first and last when there is none) and the
    unit before-and-after vector of random-token losses on the ablation sequences, pointing
    from after to before: an ablation's change in loss projected onto it is positive when
    removing the head takes the losses back toward where they were before the phase change.
    m: Measurements (tokens, random_loss, ablation_random). -> (i, j, unit vector (n,))."""
    if window is None:
        i, j = 0, len(m.tokens) - 1
    else:
        i, j = int(np.searchsorted(m.tokens, window[0])), int(np.searchsorted(m.tokens, window[1]))
    n = m.ablation_random.shape[-1]
    v = m.random_loss[i, :n].astype(float) - m.random_loss[j, :n]
    return i, j, v / max(np.linalg.norm(v), 1e-12)


def removed_share(change, clean):
    """The share of an ICL score `clean` that an ablation's change removes; NaN where there is
    no in-context learning to remove (clean above -MIN_FALL: the share would be a ratio of
    noise)."""
    change = np.asarray(change, dtype=float)
    return change / -clean if clean <= -MIN_FALL else np.full_like(change, np.nan)


def head_ablations(m, window, attribution):
    """-> HeadAblations: each head's ablation (m.ablation_icl, attribution) at the ablated
    snapshot at the window's end (measure.ablation_snapshots puts one there) and at the last."""
    size = m.ablation_icl.shape[1]
    rows, tokens = [], []
    for at in (None if window is None else window[1], m.tokens[-1]):
        if at is None:
            rows.append((np.full(size, np.nan), np.full(size, np.nan)))
            tokens.append(float("nan"))
            continue
        k = int(np.argmin(np.abs(m.tokens[np.searchsorted(m.steps, m.ablation_steps)] - at)))
        rows.append((removed_share(m.ablation_icl[k], float(m.ablation_clean_icl[k])), attribution[k]))
        tokens.append(float(at))
    return HeadAblations(tuple(tokens), np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))


def analyse(name, family, control, run, m):
    """-> ModelAnalysis of one run from its Measurements m: the ICL curve, windows and
    summary numbers."""
    tokens = m.tokens.astype(float)
    icl = icl_curve(m.ctx_loss)
    eval_loss = m.ctx_loss.mean(1)
    stats = phase_statistics(tokens, icl, eval_loss, tokens, m.prefix_matching)
    i, j, u = before_after(m, stats.icl_window)
    attribution = m.ablation_random @ u
    clean = float(m.clean_icl_ablate)
    return ModelAnalysis(
        name=name, family=family, control=control, seed=int(run.train_config.get("seed", 0)),
        run=run, measurements=m, icl=icl, eval_loss=eval_loss, stats=stats,
        induction_heads=[f"{l}.{h}" for l, h in zip(*np.nonzero(m.classes == "induction"))],
        ablation_tokens=m.tokens[np.searchsorted(m.steps, m.ablation_steps)],
        attribution=attribution, before_after_steps=(i, j),
        shares={str(group): float(removed_share(change, clean))
                for group, change in zip(m.group_names, m.group_icl)},
        heads=head_ablations(m, stats.icl_window, attribution))


def percent(share):
    """A share as a percentage; '-' where there is none (None or NaN)."""
    return "-" if share is None or np.isnan(share) else f"{share:.0%}"


def summary_line(model):
    s = model.stats
    w, b = s.icl_window, s.bump
    where = (f"window {w[0] / 1e6:.2f}M-{w[1] / 1e6:.2f}M tokens, ICL {s.icl_before:+.3f} -> "
             f"{s.icl_after:+.3f} ({percent(s.share_in_window)} of its fall in the window, "
             f"{s.change_after:+.3f} after)" if w else "no phase change")
    rise = model.prefix_rise
    shares = ", ".join(f"{k} {v:.0%}" for k, v in model.shares.items()) or "nothing"
    return (f"{model.name:>13} seed {model.seed}: {where}; final ICL {model.icl[-1]:+.3f}; "
            f"loss bump {b.size:.3f} (noise {b.noise:.3f}) at {b.at / 1e6:.2f}M; prefix-matching "
            f"onset {'%.2fM' % (rise[0] / 1e6) if rise else 'none'}; induction heads "
            f"{', '.join(model.induction_heads) or 'none'}; ICL removed by ablating {shares}")


def joint_pca(models, k=2):
    """PCA of the random-token loss vectors of every snapshot of every model, fitted jointly
    -> ({name: (S, k) coordinates}, explained variance ratios (k,))."""
    stacked = np.concatenate([m.measurements.random_loss.astype(float) for m in models])
    mean = stacked.mean(0)
    _, s, vt = np.linalg.svd(stacked - mean, full_matrices=False)
    ratio = s[:k] ** 2 / (s ** 2).sum()
    return {m.name: (m.measurements.random_loss - mean) @ vt[:k].T for m in models}, ratio


def share_table(models):
    """Argument 3: per model, the share of its final ICL score removed by ablating the
    induction heads together and all other heads together."""
    return [(m.name, m.shares.get("induction heads", float("nan")),
             m.shares.get("all other heads", float("nan")), float(m.measurements.clean_icl_ablate))
            for m in models]


# ---- the coloured passage (the paper's Harry Potter figure) ----------------------------------

PASSAGE = ("This is the house that Jack built. This is the malt that lay in the house that Jack "
           "built. This is the rat that ate the malt that lay in the house that Jack built. This "
           "is the cat that killed the rat that ate the malt that lay in the house that Jack built.")


def passage_tokens(text, n_ctx, tokenizer=BYTES):
    """BOS + the tokens of `text` (str or UTF-8 bytes), cut to n_ctx tokens -> (T,) int64."""
    return np.concatenate([[BOS], tokenizer.encode(text)[: n_ctx - 1]]).astype(np.int64)


def passage_losses(run, steps, text=PASSAGE):
    """Per-token losses of `text` (after BOS) at each snapshot step -> ([each token's text],
    (K, n))."""
    tokens = passage_tokens(text, run.config.n_ctx, run.tokenizer)
    pieces = [run.tokenizer.decode([t]) for t in tokens[1:]]
    return pieces, np.stack([run.model(s).per_token_loss(tokens[None])[0] for s in steps])


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
