"""Runs on disk without training: write_run saves given models as a run's snapshots;
write_handmade_run's snapshots are the hand-built induction model: step 0 with a uniform
layer-0 head, later steps with the previous-token head (for the circuits CLIs' tests)."""
import numpy as np

from circuits.handmade import induction_model
from minitransformer.presets import TrainConfig
from minitransformer.runs import LOG_KEYS, run_arrays, run_file, save_npz, save_snapshot

STEPS = (0, 10, 20)


def write_run(out, models, eval_tokens):
    """models {step: Model} -> a run in `out` whose snapshots (and latest weights: the last
    step's) are theirs, in float32, 512 tokens a step."""
    snapshots = []
    for step, model in models.items():
        params = {k: np.asarray(v, dtype=np.float32) for k, v in model.params.items()}
        save_snapshot(out, step, step * 512, params)
        snapshots.append((step, step * 512))
    cfg, last = model.config, snapshots[-1][0]
    save_npz(run_file(out), run_arrays(
        cfg.to_dict(), TrainConfig(n_eval=len(eval_tokens)).to_dict(),
        {"name": "handmade", "sha256": ""}, eval_tokens, np.ones(cfg.d_vocab, dtype=np.int64),
        {k: np.zeros(last) for k in LOG_KEYS}, snapshots, params, {"step": last},
        last, last * 512, np.random.default_rng(0).bit_generator.state))
    return out


def write_handmade_run(out, eval_tokens, steps=STEPS, d_vocab=32):
    return write_run(out, {step: induction_model(d_vocab=d_vocab, n_ctx=64,
                                                 previous_token_head=step > 0)
                           for step in steps}, eval_tokens)
