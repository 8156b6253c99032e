"""Every measurement the Model Analysis Table draws, for every snapshot of one run, cached in
<run>/measurements.npz (recomputed when missing, older than the run, of another version, or
not fitting the run: its snapshots, layers, heads or eval set; a line says why). The file's
folder is checked before the minutes of computing; the head scores need n_ctx >= 5.

    python -m experiments.measure runs/sweep/attn-only-2l

The head scores are circuits.scores's (HeadScores, on its one sample); the per-token losses
themselves are cached per snapshot by experiments.losses.

Speed: the per-token losses run on the cache-less Model.per_token_loss and the ablations from
each head's own layer up (circuits.ablation, reuse=True); both give the numbers of a whole
forward, to the bit. Every snapshot is measured on all of the eval set: the phase-change
windows are read from the ICL scores of the inner snapshots too, and fewer sequences there
move them (docs/backends-and-speed.md).
"""
import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from circuits import HeadScores, ablation_losses, icl_change, icl_score
from minitransformer.cpu import command_settings
from minitransformer.backend import add_device_argument
from circuits.evaluators import require_n_ctx
from minitransformer.io import error, os_error
from minitransformer.npz import one_line
from minitransformer.runs import Run, read_npz, run_file, save_npz

from .losses import snapshot_losses
from .timeseries import evaluated_steps, icl_curve, phase_statistics

VERSION = 2           # of what is measured: a cache of another version is measured again
N_ABLATE = 128        # eval sequences the ablations run on (each head costs one forward pass)
ABLATED_SNAPSHOTS = 10
HEAD_SCORES = ("prefix_matching", "copying", "copying_paper", "previous_token",
               "prev_token_qk_trace", "prev_token_qk_trace_normalised")   # HeadScores' own names
# the members that caches written before the fields took HeadScores' names hold them under
OLD_MEMBERS = {"prefix": "prefix_matching", "prev_token": "previous_token",
               "qk_trace": "prev_token_qk_trace", "qk_trace_norm": "prev_token_qk_trace_normalised"}
SCALARS = {"version": int, "clean_icl_ablate": float, "n_layers": int, "n_heads": int}


@dataclass(frozen=True)
class Measurements:
    """One run's measurements; on disk one .npz member per field, the arrays read-only.
    S snapshots, N eval sequences, T = n_ctx, L layers, H heads, A ablated snapshots."""
    prefix_matching: np.ndarray   # (S,L,H) HeadScores.prefix_matching of each snapshot
    copying: np.ndarray           # (S,L,H) .copying
    copying_paper: np.ndarray     # (S,L,H) .copying_paper (the paper's form: chance -0.846)
    previous_token: np.ndarray    # (S,L,H) .previous_token
    prev_token_qk_trace: np.ndarray             # (S,L,H) .prev_token_qk_trace (NaN in layer 0)
    prev_token_qk_trace_normalised: np.ndarray  # (S,L,H) .prev_token_qk_trace_normalised
    version: int                  # VERSION
    steps: np.ndarray             # (S,) the snapshots
    tokens: np.ndarray            # (S,) their training tokens
    ctx_loss: np.ndarray          # (S,T-1) per-token loss averaged over the eval set, by index
    random_index: np.ndarray      # (N,) one fixed random position per eval sequence (paper:
    random_loss: np.ndarray       # (S,N)  "a random token from each example"), its losses
    ablation_steps: np.ndarray    # (A,) snapshots at which every head was ablated alone: 10
                                  #   spread over training and the ICL window's two edges
    ablation_icl: np.ndarray      # (A,L*H) (pattern-preserving, first n_ablate eval sequences):
    ablation_random: np.ndarray   # (A,L*H,n) the change in ICL score and random-token losses
    ablation_clean_icl: np.ndarray  # (A,) the unablated ICL score on those sequences
    classes: np.ndarray           # (L,H) HeadScores.classes at the last snapshot
    group_names: np.ndarray       # (G,) Argument 3's head sets ablated together at the last
    group_icl: np.ndarray         # (G,)  snapshot (induction heads, all other heads): their
    clean_icl_ablate: float       #       change in ICL score; the clean score on those sequences
    n_layers: int
    n_heads: int

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if field.name not in SCALARS:     # a read-only view: the caller's array is untouched
                view = np.asarray(getattr(self, field.name)).view()
                view.setflags(write=False)
                object.__setattr__(self, field.name, view)

    @classmethod
    def read(cls, path):
        """-> Measurements from an .npz (members under their OLD_MEMBERS names too); a missing
        member is a ValueError naming it."""
        arrays = {OLD_MEMBERS.get(key, key): value for key, value in read_npz(path).items()}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in arrays]
        if missing:
            raise ValueError(f"{path}: missing key {missing[0]!r}")
        for name in SCALARS:
            if np.size(arrays[name]) != 1:
                raise ValueError(f"{path}: key {name!r} has shape {np.shape(arrays[name])}, "
                                 f"expected one number")
        return cls(**{f.name: SCALARS[f.name](arrays[f.name].item()) if f.name in SCALARS
                      else arrays[f.name] for f in dataclasses.fields(cls)})

    def write(self, path):
        save_npz(path, {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)})


def measurement_file(run):
    return run.dir / "measurements.npz"


def writable(path):
    """A one-line ValueError naming `path` if the measurements cannot be written there (a
    folder in its place, a read-only run folder); a full disk shows only when written."""
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: cannot write the measurements (not a file)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot write the measurements ({path.parent} is not a "
                         f"writable folder)")


def random_positions(n_examples, n_positions, seed=0):
    """One fixed random index into each sequence's (T-1) per-token losses."""
    return np.random.default_rng(seed).integers(0, n_positions, n_examples)


def cached_measurements(run, path=None, log=None):
    """The cached Measurements of `run` if they are fresh, readable and fit the run, else None
    (with `log`, one line saying why a cache there is not used)."""
    path = path or measurement_file(run)
    if not path.exists() or path.stat().st_mtime < run_file(run.dir).stat().st_mtime:
        return None
    try:
        cached = Measurements.read(path)
        misfit = None if cached.version == VERSION else f"version {cached.version}, not {VERSION}"
        misfit = misfit or cache_misfit(cached, run)
    except (ValueError, TypeError, OverflowError) as e:   # broken, partial: computed again
        misfit = one_line(e).removeprefix(f"{path}: ")
    if misfit:
        if log:
            log(f"{path}: not used ({misfit}); measuring again")
        return None
    return cached


def cache_misfit(m, run):
    """-> None if Measurements `m` fit `run` (its snapshots, layers, heads and eval set: every
    field of the shape and the kind Measurements says), else what does not, in a few words."""
    S, (N, T) = len(run.snapshot_steps), run.eval_tokens.shape
    L, H = run.config.n_layers, run.config.n_heads
    if (m.n_layers, m.n_heads) != (L, H):
        return f"n_layers {m.n_layers}, n_heads {m.n_heads}; the run has {L}, {H}"
    if m.steps.shape != (S,) or not np.array_equal(m.steps, run.snapshot_steps):
        return f"'steps' are not the run's {S} snapshots"
    A, G = m.ablation_steps.shape[:1] or (-1,), m.group_names.shape[:1] or (-1,)
    expected = {name: ((S, L, H), "iuf") for name in HEAD_SCORES}
    expected.update(tokens=((S,), "iuf"), ctx_loss=((S, T - 1), "iuf"), random_index=((N,), "iu"),
                    random_loss=((S, N), "iuf"), ablation_steps=((A[0],), "iu"),
                    ablation_icl=((A[0], L * H), "iuf"),
                    ablation_random=((A[0], L * H, min(N_ABLATE, N)), "iuf"),
                    ablation_clean_icl=((A[0],), "iuf"), classes=((L, H), "U"),
                    group_names=((G[0],), "U"), group_icl=((G[0],), "iuf"))
    for name, (shape, kinds) in expected.items():
        array = getattr(m, name)
        if array.shape != shape or array.dtype.kind not in kinds:
            return f"{name!r} is {array.dtype} {array.shape}, expected {shape}"
    if ((m.random_index < 0) | (m.random_index >= T - 1)).any():
        return "'random_index' outside the context"
    if not np.isin(m.ablation_steps, m.steps).all():
        return "'ablation_steps' not among the snapshots"
    return None


def ablation_snapshots(steps, tokens, ctx_loss, prefix_matching):
    """The snapshots whose heads are ablated one by one: ABLATED_SNAPSHOTS spread evenly and
    the two edges of the ICL window (timeseries.phase_statistics, on every snapshot), where
    Argument 3 reads each head's share of the ICL score -> sorted steps."""
    stats = phase_statistics(tokens, icl_curve(ctx_loss), ctx_loss.mean(1), tokens, prefix_matching)
    edges = [] if stats.icl_window is None else [steps[np.searchsorted(tokens, t)]
                                                  for t in stats.icl_window]
    return np.union1d(evaluated_steps(steps, ABLATED_SNAPSHOTS), edges).astype(steps.dtype)


def group_ablations(classes):
    """Argument 3's head sets: the induction heads together, every other head together."""
    heads = [(l, h) for l in range(classes.shape[0]) for h in range(classes.shape[1])]
    induction = [x for x in heads if classes[x] == "induction"]
    other = [x for x in heads if classes[x] != "induction"]
    return [(name, group) for name, group in (("induction heads", induction),
                                              ("all other heads", other)) if group]


def measure_run(run, log=None, force=False):
    """-> the Measurements of `run`, from the cache or computed (and cached)."""
    path = measurement_file(run)
    cached = None if force else cached_measurements(run, path, log)
    if cached is not None:
        return cached
    require_n_ctx(run.config.n_ctx, "experiments.measure")
    writable(path)                  # before the minutes of computing, not after
    start = time.time()
    steps = run.snapshot_steps
    n, t = run.eval_tokens.shape
    index = random_positions(n, t - 1)
    ctx_loss, random_loss, scores = [], [], {name: [] for name in HEAD_SCORES}
    for i, step in enumerate(steps):
        losses = snapshot_losses(run, step)
        ctx_loss.append(losses.mean(0))
        random_loss.append(losses[np.arange(n), index])
        heads = HeadScores.of_run(run, step)
        for name in HEAD_SCORES:
            scores[name].append(getattr(heads, name))
        if log and (i % 10 == 9 or i == len(steps) - 1):
            log(f"{run.dir.name}: measured {i + 1}/{len(steps)} snapshots, {time.time() - start:.0f} s")
    classes = heads.classes
    n_ablate = min(N_ABLATE, n)
    tokens = run.eval_tokens[:n_ablate]
    ablated_steps = ablation_snapshots(steps, run.snapshot_tokens, np.stack(ctx_loss),
                                       np.stack(scores["prefix_matching"]))
    ab_icl, ab_random, ab_clean = [], [], []
    rows = np.arange(n_ablate)
    for step in ablated_steps:
        result = ablation_losses(run.model(step), tokens)
        ab_icl.append(icl_change(result))
        ab_clean.append(icl_score(result.clean))
        ab_random.append(result.ablated[:, rows, index[:n_ablate]] - result.clean[rows, index[:n_ablate]])
    groups = group_ablations(classes)
    grouped = ablation_losses(run.model(steps[-1]), tokens, [g for _, g in groups])
    m = Measurements(**{name: np.stack(value) for name, value in scores.items()},
                     version=VERSION, steps=steps, tokens=run.snapshot_tokens,
                     ctx_loss=np.stack(ctx_loss), random_index=index, random_loss=np.stack(random_loss),
                     ablation_steps=ablated_steps, ablation_icl=np.stack(ab_icl),
                     ablation_random=np.stack(ab_random).astype(np.float32),
                     ablation_clean_icl=np.array(ab_clean), classes=classes,
                     group_names=np.array([name for name, _ in groups], dtype=str),
                     group_icl=icl_change(grouped), clean_icl_ablate=icl_score(grouped.clean),
                     n_layers=run.config.n_layers, n_heads=run.config.n_heads)
    try:
        m.write(path)
    except OSError as e:            # a full disk, or the folder changed while measuring
        raise ValueError(f"{path}: cannot write the measurements ({e.strerror or e})") from None
    if log:
        log(f"{run.dir.name}: measurements written to {path} ({time.time() - start:.0f} s)")
    return m


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.measure",
                                     description="Measure every snapshot of a run (cached).")
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--force", action="store_true", help="recompute even if cached")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    path = None
    try:
        with command_settings():
            for path in args.runs:
                measure_run(Run(path, args.device), log=print, force=args.force)
    except ValueError as e:
        return error(e)
    except OSError as e:            # measure_run names its own file; anything else its run
        return os_error(e, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
