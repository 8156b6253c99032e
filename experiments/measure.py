"""Every measurement the Model Analysis Table draws, for every snapshot of one run, cached in
<run>/measurements.npz (recomputed when missing, older than the run, or of another version).

    python -m experiments.measure runs/sweep/attn-only-2l

S snapshots, N eval sequences, T = n_ctx, L layers, H heads, A ablated snapshots.
  steps, tokens (S,)          the snapshots
  ctx_loss (S, T-1)           per-token loss averaged over the eval set, by context index
  random_index (N,)           one fixed random position per eval sequence (paper: "a random
  random_loss (S, N)            token from each example"), and its loss at every snapshot
  prefix, copying, prev_token (S, L, H)   the empirical head evaluators (circuits.evaluators)
  qk_trace, qk_trace_norm (S, L, H)       the Id (x) h_prev (x) W trace from the weights
  ablation_steps (A,)         snapshots at which every head was ablated alone (pattern-
  ablation_icl (A, L*H)       preserving), on the first n_ablate eval sequences: the change
  ablation_random (A, L*H, n)   in ICL score and in the random-token losses
  classes (L, H)              each head's class at the last snapshot
  group_names (G,), group_icl (G,)   ablating heads together at the last snapshot (Argument
  clean_icl_ablate ()                3): induction heads, all other heads; the clean ICL score
                                     on the same sequences
The per-token losses themselves are cached per snapshot by experiments.losses.
"""
import argparse
import sys
import time

import numpy as np

from circuits import (ablation_losses, classify_heads, copying_score, icl_change, icl_score,
                      prefix_matching_score, prev_token_qk_trace, previous_token_score)
from circuits.threads import blas_threads
from minitransformer.runs import Run, read_npz, run_file, save_npz

from .losses import snapshot_losses
from .phase_change import evaluated_steps

VERSION = 1
N_ABLATE = 128        # eval sequences the ablations run on (each head costs one forward pass)
ABLATED_SNAPSHOTS = 10
N_PREVIOUS = 16       # eval sequences for the previous-token score


def measurement_file(run):
    return run.dir / "measurements.npz"


def random_positions(n_examples, n_positions, seed=0):
    """One fixed random index into each sequence's (T-1) per-token losses."""
    return np.random.default_rng(seed).integers(0, n_positions, n_examples)


def cached_measurements(run, path=None):
    """The cached measurements of `run` if they are fresh, else None."""
    path = path or measurement_file(run)
    if not path.exists() or path.stat().st_mtime < run_file(run.dir).stat().st_mtime:
        return None
    cached = read_npz(path)
    if int(cached.get("version", -1)) != VERSION or not np.array_equal(cached["steps"], run.snapshot_steps):
        return None
    return cached


def head_scores(run, step):
    """Empirical and weight-based head scores of one snapshot -> dict of (L,H)."""
    model = run.model(step)
    prev = previous_token_score(model, run.eval_tokens[:N_PREVIOUS])
    trace, trace_norm = prev_token_qk_trace(model, prev)
    return dict(prefix=prefix_matching_score(model, token_counts=run.token_counts),
                copying=copying_score(model, token_counts=run.token_counts),
                prev_token=prev, qk_trace=trace, qk_trace_norm=trace_norm)


def group_ablations(classes):
    """Argument 3's head sets: the induction heads together, every other head together."""
    heads = [(l, h) for l in range(classes.shape[0]) for h in range(classes.shape[1])]
    induction = [x for x in heads if classes[x] == "induction"]
    other = [x for x in heads if classes[x] != "induction"]
    return [(name, group) for name, group in (("induction heads", induction),
                                              ("all other heads", other)) if group]


def measure_run(run, log=None, force=False):
    """-> the measurements dict of `run`, from the cache or computed (and cached)."""
    path = measurement_file(run)
    cached = None if force else cached_measurements(run, path)
    if cached is not None:
        return cached
    start = time.time()
    steps = run.snapshot_steps
    n, t = run.eval_tokens.shape
    index = random_positions(n, t - 1)
    ctx_loss, random_loss, scores = [], [], []
    with blas_threads(1):
        for i, step in enumerate(steps):
            losses = snapshot_losses(run, step)
            ctx_loss.append(losses.mean(0))
            random_loss.append(losses[np.arange(n), index])
            scores.append(head_scores(run, step))
            if log and (i % 10 == 9 or i == len(steps) - 1):
                log(f"{run.dir.name}: measured {i + 1}/{len(steps)} snapshots, {time.time() - start:.0f} s")
        out = {key: np.stack([s[key] for s in scores]) for key in scores[0]}
        cfg = run.config
        classes = classify_heads(out["prefix"][-1], out["copying"][-1], out["prev_token"][-1])
        n_ablate = min(N_ABLATE, n)
        tokens = run.eval_tokens[:n_ablate]
        ablated_steps = evaluated_steps(steps, ABLATED_SNAPSHOTS)
        ab_icl, ab_random = [], []
        rows = np.arange(n_ablate)
        for step in ablated_steps:
            result = ablation_losses(run.model(step), tokens)
            ab_icl.append(icl_change(result))
            ab_random.append(result.ablated[:, rows, index[:n_ablate]] - result.clean[rows, index[:n_ablate]])
        groups = group_ablations(classes)
        grouped = ablation_losses(run.model(steps[-1]), tokens, [g for _, g in groups])
    out.update(version=np.array(VERSION), steps=steps, tokens=run.snapshot_tokens,
               ctx_loss=np.stack(ctx_loss), random_index=index, random_loss=np.stack(random_loss),
               ablation_steps=ablated_steps, ablation_icl=np.stack(ab_icl),
               ablation_random=np.stack(ab_random).astype(np.float32), classes=classes,
               group_names=np.array([name for name, _ in groups], dtype=str),
               group_icl=icl_change(grouped), clean_icl_ablate=np.array(icl_score(grouped.clean)),
               n_layers=np.array(cfg.n_layers), n_heads=np.array(cfg.n_heads))
    save_npz(path, out)
    if log:
        log(f"{run.dir.name}: measurements written to {path} ({time.time() - start:.0f} s)")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.measure",
                                     description="Measure every snapshot of a run (cached).")
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--force", action="store_true", help="recompute even if cached")
    args = parser.parse_args(argv)
    try:
        for path in args.runs:
            measure_run(Run(path), log=print, force=args.force)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
