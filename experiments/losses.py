"""Per-token losses of snapshots on a run's fixed eval set, cached beside the run (paper:
"Data Collection"); circuits.icl reads the in-context-learning score from them.

losses[n, i] is the loss of predicting token i+1 of eval sequence n from tokens 0..i, so the
loss "at context index i" (the i-th token, predicted from i earlier ones) is losses[:, i-1].
"""
import contextlib

import numpy as np

from minitransformer.runs import read_npz, save_npz, snapshot_file

BATCH = 32   # part of the numbers: OpenBLAS rounds a (B*T, D) product differently for another B
             # (~1e-5 in a loss), so the cached losses and measurements hold for 32 only


def per_token_losses(model, tokens, batch=BATCH, hooks=None):
    """(N, T) eval tokens -> (N, T-1) float32 per-token losses, in batches. Model.per_token_loss
    keeps no cache (nothing is kept for a backward): the numbers of the training forward, to
    the bit, in less time and memory (docs/backends-and-speed.md)."""
    return np.concatenate([model.per_token_loss(tokens[i:i + batch], hooks)
                           for i in range(0, len(tokens), batch)]).astype(np.float32)


def cache_file(run, step):
    return run.dir / "losses" / f"step_{int(step):07d}.npz"


def snapshot_losses(run, step, n_eval=None):
    """Per-token losses (N, T-1) of snapshot `step` on the first n_eval eval sequences (all by
    default), from the cache beside the run when it is there and newer than the snapshot."""
    tokens = run.eval_tokens if n_eval is None else run.eval_tokens[:n_eval]
    path = cache_file(run, step)
    snapshot = snapshot_file(run.dir, int(step))
    if path.exists() and path.stat().st_mtime >= snapshot.stat().st_mtime:
        with contextlib.suppress(ValueError, KeyError):   # a broken cache is computed again
            cached = read_npz(path)["losses"]
            if cached.ndim == 2 and cached.shape[0] >= len(tokens) and cached.shape[1] == tokens.shape[1] - 1:
                return cached[: len(tokens)]
    losses = per_token_losses(run.model(step), tokens)
    if n_eval is None or n_eval >= len(run.eval_tokens):
        with contextlib.suppress(OSError):         # no cache in a read-only run folder
            save_npz(path, {"losses": losses, "step": np.array(int(step))})
    return losses
