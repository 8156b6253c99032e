"""Train a model and save a run: python -m minitransformer.train --preset attn-only-2l --out runs/NAME

Writes runs/NAME/run.npz (config, log, fixed eval set, latest weights and optimizer state)
and runs/NAME/snapshots/step_XXXXXXX.npz on the snapshot schedule. A killed run continues
with --resume and ends bit-identical (NumPy) to one never interrupted.
"""
import argparse
import json
import math
import pathlib
import shutil
import sys
import time

import numpy as np

from .backend import to_numpy
from .config import ModelConfig
from .data import (corpus_from_spec, describe, eval_set, random_crops, random_repeat_windows,
                   repeat_spans)
from .model import Model
from .optim import AdamW, clip_grad_norm, learning_rate
from .presets import PRESETS, TrainConfig, apply_overrides, preset
from .runs import Run, existing_run, run_arrays, run_file, save_npz, save_snapshot


def snapshot_schedule(total_steps, count, spacing="linear"):
    """Steps at which to save snapshots, always including 0 and total_steps."""
    if spacing == "log":
        steps = np.geomspace(1, total_steps, count - 1)
        steps = np.concatenate([[0], steps])
    else:
        steps = np.linspace(0, total_steps, count)
    return sorted(set(np.round(steps).astype(int).tolist()) | {0, total_steps})


class Progress:
    """A live line on a terminal (step, tokens, tokens/s, loss, lr, ETA); plain log lines
    (one per snapshot) otherwise."""

    def __init__(self, total_steps, tokens_per_step, stream=sys.stderr, enabled=True, label=""):
        self.label = label   # names the run on log lines (a sweep interleaves several)
        self.total, self.tokens_per_step, self.stream = total_steps, tokens_per_step, stream
        self.live = enabled and stream.isatty()
        self.enabled = enabled
        self.start = self.last = time.time()
        self.first_step = None

    def line(self, step, loss, lr):
        if self.first_step is None:
            self.first_step = step
        elapsed = time.time() - self.start
        rate = (step - self.first_step) * self.tokens_per_step / max(elapsed, 1e-9)
        eta = (self.total - step) * self.tokens_per_step / rate if rate > 0 else float("inf")
        return (f"step {step:>6}/{self.total}  {step * self.tokens_per_step / 1e6:7.2f}M tokens  "
                f"{rate:>7,.0f} tok/s  loss {loss:.4f}  lr {lr:.2e}  ETA {_duration(eta)}")

    def update(self, step, loss, lr):
        if self.live and time.time() - self.last > 0.5:
            self.last = time.time()
            self.stream.write("\r" + self.line(step, loss, lr) + "\033[K")
            self.stream.flush()

    def snapshot(self, step, loss, lr):
        if self.enabled and not self.live:
            print(self.label + "snapshot " + self.line(step, loss, lr), file=self.stream, flush=True)

    def done(self):
        if self.live:
            self.stream.write("\n")


def _duration(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def train(out, model_config, train_config, resume=False, force=False, progress=True):
    """Train and save a run in `out` -> the final Run."""
    out = pathlib.Path(out)
    cfg = ModelConfig.from_dict(model_config)
    tc = train_config if isinstance(train_config, TrainConfig) else TrainConfig(**train_config)
    if existing_run(out) and not resume:
        if not force:
            raise ValueError(f"{out}: already holds a run; --resume to continue it, or --force "
                             f"to overwrite it")
        shutil.rmtree(out / "snapshots", ignore_errors=True)
        run_file(out).unlink(missing_ok=True)
    if resume and not run_file(out).exists():
        raise ValueError(f"{run_file(out)}: no run to resume")
    corpus = corpus_from_spec(tc.corpus)
    tokens_per_step = tc.batch_size * cfg.n_ctx
    total_steps = max(1, math.ceil(tc.total_tokens / tokens_per_step))
    schedule = snapshot_schedule(total_steps, tc.snapshots, tc.snapshot_spacing)
    optimizer = AdamW(betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    rng = np.random.default_rng(tc.seed + 1)
    log = {"step": [], "tokens": [], "loss": [], "lr": [], "grad_norm": [], "seconds": []}
    snapshots, step, elapsed = [], 0, 0.0
    if resume:
        for stale in list(out.glob(".*.tmp")) + list(out.glob("snapshots/.*.tmp")):
            stale.unlink()   # a write the kill interrupted; its target was never replaced
        run = Run(out)
        if run.corpus["sha256"] != corpus.sha256:
            raise ValueError(f"{run.path}: key 'corpus' names data with sha256 "
                             f"{run.corpus['sha256'][:12]}, but {tc.corpus} now hashes to "
                             f"{corpus.sha256[:12]}; cannot resume on different data")
        cfg = run.config
        tc = TrainConfig(**run.train_config)
        model = Model(cfg, params=run.params(), device=tc.device)
        optimizer.state = {"step": int(run.data["optim.step"])}
        optimizer.state.update({k[6:]: model.xp.asarray(v) for k, v in run.data.items()
                                if k.startswith("optim.") and k != "optim.step"})
        rng.bit_generator.state = json.loads(str(run.data["state.rng"]))
        log = {k: list(v) for k, v in run.log.items()}
        snapshots = list(zip(run.snapshot_steps.tolist(), run.snapshot_tokens.tolist()))
        step = int(run.data["state.step"])
        elapsed = float(log["seconds"][-1]) if log["seconds"] else 0.0
        eval_tokens, token_counts = run.eval_tokens, run.token_counts
    else:
        model = Model(cfg, seed=tc.seed, device=tc.device)
        eval_tokens = eval_set(corpus, tc.n_eval, cfg.n_ctx, tc.eval_seed)
        token_counts = corpus.token_counts(cfg.d_vocab)
    frozen = set() if cfg.pos_trainable else {"pos_embed.W_pos"}
    if progress:
        print(f"{out}: {describe(corpus)}; {total_steps} steps of {tokens_per_step} tokens, "
              f"{len(schedule)} snapshots", file=sys.stderr)
    bar = Progress(total_steps, tokens_per_step, enabled=progress, label=f"{out.name}: ")
    start = time.time() - elapsed
    loss = lr = float("nan")

    def save_state():
        host = {k: to_numpy(v) for k, v in model.params.items()}
        save_snapshot(out, step, step * tokens_per_step, host)
        snapshots.append((step, step * tokens_per_step))
        saved.add(step)
        opt_state = {k: to_numpy(v) for k, v in optimizer.state.items()}
        save_npz(run_file(out), run_arrays(
            cfg.to_dict(), tc.to_dict(), {"name": corpus.name, "sha256": corpus.sha256},
            eval_tokens, token_counts, log, snapshots, host, opt_state, step,
            step * tokens_per_step, rng.bit_generator.state))
        bar.snapshot(step, loss, lr)

    saved = {s for s, _ in snapshots}
    while True:
        if step in schedule and step not in saved:
            save_state()
        if step >= total_steps:
            break
        tokens = random_crops(corpus.train, tc.batch_size, cfg.n_ctx, rng)
        if tc.repeat_fraction:
            repeat_spans(tokens, tc.repeat_fraction, rng)
        if tc.synthetic_fraction:
            random_repeat_windows(tokens, tc.synthetic_fraction, rng, d_vocab=cfg.d_vocab)
        loss, grads = model.loss_and_grads(tokens)
        for name in frozen:
            grads.pop(name, None)
        grad_norm = clip_grad_norm(grads, tc.grad_clip)
        lr = learning_rate(step, tc.lr, tc.warmup_steps, total_steps, tc.schedule)
        optimizer.step(model.params, grads, lr)
        step += 1
        for key, value in zip(log, (step, step * tokens_per_step, loss, lr, grad_norm,
                                    time.time() - start)):
            log[key].append(value)
        bar.update(step, loss, lr)
    bar.done()
    return Run(out)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m minitransformer.train",
        description="Train a transformer and save a run directory (run.npz + snapshots/).",
        epilog="Overrides: any ModelConfig or TrainConfig field as key=value, e.g. "
               "n_layers=3 lr=1e-3 total_tokens=5e6 smeared_key=true. Presets: " + ", ".join(PRESETS))
    parser.add_argument("--preset", default="attn-only-2l", help="named settings (default attn-only-2l)")
    parser.add_argument("--out", required=True, help="run directory to write, e.g. runs/attn-only-2l")
    parser.add_argument("--corpus", help="text file or folder, 'stdlib' (the built-in Python "
                                         "standard library source), or synthetic:repeated|template")
    parser.add_argument("--device", choices=["cpu", "gpu", "auto"], help="array backend (default cpu)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        model, train_config = preset(args.preset)
        for flag in ("corpus", "device"):
            if getattr(args, flag) is not None:
                train_config[flag] = getattr(args, flag)
        apply_overrides(model, train_config, args.overrides)
        run = train(args.out, model, train_config, resume=args.resume, force=args.force,
                    progress=not args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    final = run.log["loss"][-50:]
    print(f"{run.dir}: {int(run.data['state.step'])} steps, {int(run.data['state.tokens']):,} "
          f"tokens, final train loss {np.mean(final):.4f}, {len(run.snapshot_steps)} snapshots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
