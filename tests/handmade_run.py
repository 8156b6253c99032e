"""A run on disk whose snapshots are the hand-built induction model: step 0 with a uniform
layer-0 head, later steps with the previous-token head (for the circuits CLIs' tests)."""
import numpy as np

from circuits.handmade import induction_model
from minitransformer.presets import TrainConfig
from minitransformer.runs import LOG_KEYS, run_arrays, run_file, save_npz, save_snapshot

STEPS = (0, 10, 20)


def write_handmade_run(out, eval_tokens, steps=STEPS, d_vocab=32):
    snapshots = []
    for step in steps:
        model = induction_model(d_vocab=d_vocab, n_ctx=64, previous_token_head=step > 0)
        params = {k: v.astype(np.float32) for k, v in model.params.items()}
        save_snapshot(out, step, step * 512, params)
        snapshots.append((step, step * 512))
    save_npz(run_file(out), run_arrays(
        model.config.to_dict(), TrainConfig(n_eval=len(eval_tokens)).to_dict(),
        {"name": "handmade", "sha256": ""}, eval_tokens, np.ones(d_vocab, dtype=np.int64),
        {k: np.zeros(steps[-1]) for k in LOG_KEYS}, snapshots, params, {"step": steps[-1]},
        steps[-1], steps[-1] * 512, np.random.default_rng(0).bit_generator.state))
    return out
