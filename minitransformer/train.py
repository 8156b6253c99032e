"""Train a model and save a run: python -m minitransformer.train --preset attn-only-2l --out runs/NAME

Writes runs/NAME/run.npz (config, log, fixed eval set, latest weights and optimizer state)
and runs/NAME/snapshots/step_XXXXXXX.npz on the snapshot schedule. A killed run continues
with --resume and ends bit-identical (NumPy) to one never interrupted. --force replaces those
files only (nothing else in the folder), once the new run's first state is written beside
them; a run is never written inside another run's folder. A run whose loss stops being
finite stops there, keeping its last finite state.
"""
import argparse
import math
import os
import pathlib
import shutil
import sys
import time
import warnings
from dataclasses import replace

import numpy as np

from .backend import add_device_argument, to_floats, to_numpy
from .config import MIN_N_CTX, ModelConfig
from .data import (corpus_from_spec, describe, eval_set, random_crops, random_repeat_windows,
                   repeat_spans)
from .io import error, os_error, tolerant_streams
from .tokenizer import BYTES, tokenize
from .model import Model
from .optim import AdamW, clip_grad_norm, learning_rate
from .presets import PRESETS, apply_overrides, preset
from .params import param_shapes
from .cpu import command_settings, resolve_threads
from .runs import (LOG_KEYS, RUN_FILE, Run, as_train_config, enclosing_run, existing_run, run_arrays,
                   run_file, run_files, run_lock, save_npz, save_snapshot, snapshot_file)

# where --force writes the new run's first state, inside the old run's folder, until it is
# complete and replaces the old run (a full disk then leaves the old run as it was)
STAGING = ".force-new"


def snapshot_schedule(total_steps, count, spacing="linear"):
    """Steps at which to save snapshots, always including 0 and total_steps; a count above
    the total_steps + 1 steps there are is every step (nothing of its size allocated)."""
    count = min(count, total_steps + 1)
    if spacing == "log":
        steps = np.geomspace(1, total_steps, count - 1)
        steps = np.concatenate([[0], steps])
    else:
        steps = np.linspace(0, total_steps, count)
    return sorted(set(np.round(steps).astype(int).tolist()) | {0, total_steps})


class Progress:
    """A live line on a terminal (step, tokens, tokens/s, loss, lr, ETA); plain log lines
    (one per snapshot) otherwise."""

    def __init__(self, total_steps, tokens_per_step, stream=None, enabled=True, label=""):
        self.label = label   # names the run on log lines (a sweep interleaves several)
        stream = sys.stderr if stream is None else stream   # sys.stderr as it is now
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
        head = f"step {step:>6}/{self.total}  {step * self.tokens_per_step / 1e6:7.2f}M tokens"
        if loss is None:     # no step trained yet by this process
            return head + "  starting"
        return f"{head}  {rate:>7,.0f} tok/s  loss {loss:.4f}  lr {lr:.2e}  ETA {_duration(eta)}"

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


def memory_needed(cfg, tc):
    """Rough bytes a run of these settings needs, and the settings of its largest term:
    float32 weights with their gradients and two Adam moments, one batch's activations
    kept for the backward pass (residual stream, attention patterns, MLP, logits), the
    eval set (int64)."""
    B, T, D = tc.batch_size, cfg.n_ctx, cfg.d_model
    mlp = 0 if cfg.attn_only else cfg.d_mlp
    terms = {"d_model, d_vocab, n_layers, n_heads, d_head, d_mlp":
             16 * sum(math.prod(s) for s in param_shapes(cfg).values()),
             "batch_size, n_ctx, d_model, n_heads, d_head, d_mlp, n_layers":
             4 * B * T * cfg.n_layers * (12 * D + 8 * cfg.n_heads * cfg.d_head + 6 * mlp),
             "batch_size, n_ctx, n_heads, n_layers": 4 * 4 * B * cfg.n_heads * T * T * cfg.n_layers,
             "batch_size, n_ctx, d_vocab": 4 * 4 * B * T * cfg.d_vocab,
             "n_eval, n_ctx": 8 * tc.n_eval * T}
    return sum(terms.values()), max(terms, key=terms.get)


def check_fits(cfg, tc):
    """A one-line error naming the settings when a run of them cannot fit in this machine's memory."""
    needed, culprits = memory_needed(cfg, tc)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ValueError(f"these settings need about {needed / 2**30:,.3g} GiB of memory, more than "
                         f"this machine's {available / 2**30:,.3g} GiB; the most goes to "
                         f"{culprits}: make them smaller")


def check_corpus(corpus, cfg, tc, tokenizer=BYTES):
    """The corpus must fit the model: tokens below d_vocab, each split longer than n_ctx."""
    if tokenizer.hf_json and tokenizer.vocab_size > cfg.d_vocab:
        raise ValueError(f"d_vocab={cfg.d_vocab}: tokenizer {tc.tokenizer} has "
                         f"{tokenizer.vocab_size} tokens; set d_vocab={tokenizer.vocab_size}")
    top = max(int(corpus.train.max(initial=0)), int(corpus.eval.max(initial=0)))
    if top >= cfg.d_vocab:
        raise ValueError(f"d_vocab={cfg.d_vocab}: corpus {tc.corpus!r} holds token {top}; "
                         f"d_vocab must be at least {top + 1}")
    for split in ("train", "eval"):
        length = len(getattr(corpus, split))
        if length < cfg.n_ctx + 1:
            raise ValueError(f"--corpus {tc.corpus}: its {split} split has {length:,} tokens, "
                             f"fewer than n_ctx+1={cfg.n_ctx + 1}")


def _writable_folder(out):
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "snapshots").mkdir(exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out}: cannot write a run there ({e.strerror or e})") from None
    for folder in (out, out / "snapshots"):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{folder}: cannot write a run there (no write permission)")


def _stored_run(out, cfg, tc, corpus, tokenizer, resume, force):
    """The run in `out` to continue (None: start afresh), after the checks that keep a run
    from being lost: --force only after everything else is validated, --resume only with
    the stored run's settings and data."""
    for stale in list(out.glob(".*.tmp")) + list(out.glob("snapshots/.*.tmp")):
        stale.unlink()   # a write a kill interrupted (we hold the lock); its target was never replaced
    if (out / STAGING).is_dir():
        shutil.rmtree(out / STAGING)   # a --force start killed before its first state: ours
    if not existing_run(out):
        if resume and not snapshot_file(out, 0).exists():
            raise ValueError(f"{run_file(out)}: no run to resume")
        return None      # empty, or a start killed before its first run.npz: start again
    if force:
        return None      # replaced once the new run's first state is written (_replace_run)
    if not resume or not run_file(out).exists():
        raise ValueError(f"{out}: already holds a run; --resume to continue it, or --force "
                         f"to overwrite it")
    run = Run(out)
    differ = run.differing_settings(cfg, tc)
    if differ:
        raise ValueError(f"{out}: --resume with settings that differ from the stored run's: "
                         f"{'; '.join(differ)}; give the flags (and --preset) it was started with")
    if run.corpus["sha256"] != corpus.sha256:
        raise ValueError(f"{run.path}: key 'corpus' names data with sha256 "
                         f"{run.corpus['sha256'][:12]}, but {tc.corpus} now hashes to "
                         f"{corpus.sha256[:12]}; cannot resume on different data")
    if run.tokenizer.sha256 != tokenizer.sha256:
        raise ValueError(f"{run.path}: key 'tokenizer' ({tc.tokenizer}, sha256 "
                         f"{run.tokenizer.sha256[:12]}) is not the one learned from {tc.corpus} "
                         f"now (sha256 {tokenizer.sha256[:12]}); cannot resume on other tokens")
    return run


def _replace_run(out, staging):
    """Put the new run's first state (run.npz, snapshot 0 in `staging`) in place of the run
    in `out`: only the files the run format names are deleted; renames, no space needed."""
    old = run_files(out)
    for path in [p for p in old if p.name == RUN_FILE] + [p for p in old if p.name != RUN_FILE]:
        path.unlink()   # run.npz first: a kill from here on leaves no run.npz naming old snapshots
    (out / "snapshots").mkdir(exist_ok=True)
    os.replace(snapshot_file(staging, 0), snapshot_file(out, 0))
    os.replace(run_file(staging), run_file(out))
    shutil.rmtree(staging)


def _remove_if_empty(folder):
    """Remove `folder` and its snapshots/ if nothing is in them (a refused start's)."""
    for path in (folder / "snapshots", folder):
        try:
            path.rmdir()
        except OSError:
            return


def train_step(model, optimizer, tokens, lr, grad_clip, frozen=(), threads=1):
    """One training step: loss and gradients, global-norm clipping, AdamW -> (loss, gradient
    norm before clipping), 0-d arrays on the model's device. Nothing in it reads the device
    back (a GPU runs the step while the host queues it); frozen: names not to update;
    threads: the batch split across CPU threads (Model.loss_and_grads)."""
    loss, grads = model.loss_and_grads(tokens, device_loss=True, threads=threads)
    for name in frozen:
        grads.pop(name, None)
    grad_norm = clip_grad_norm(grads, grad_clip)
    optimizer.step(model.params, grads, lr)
    return loss, grad_norm


def train(out, model_config, train_config, resume=False, force=False, progress=True,
          smear=None):
    """Train and save a run in `out` -> the final Run. Every setting, the corpus and the
    folder are checked before anything in `out` is written or deleted; the run's lock is
    held throughout (a second process on the same `out` is refused). smear: the smeared
    key's op pair (forward, backward) for Model, the engine's by default (exercise 13)."""
    if os.fspath(out) == "":
        raise ValueError("--out: empty; name a run directory")
    if resume and force:
        raise ValueError("--resume and --force: choose one (continue the run, or overwrite it)")
    out = pathlib.Path(out)
    cfg = ModelConfig.from_dict(model_config)
    tc = as_train_config(train_config)
    check_fits(cfg, tc)
    if cfg.n_ctx < MIN_N_CTX:
        raise ValueError(f"n_ctx: {cfg.n_ctx} is too short to train a run the analyses can read "
                         f"(at least {MIN_N_CTX}: BOS + 4 repeats for prefix matching)")
    outer = enclosing_run(out)
    if outer is not None:
        raise ValueError(f"{out}: inside the folder of the run {outer}; choose an --out outside "
                         f"any run's folder")
    text = corpus_from_spec(tc.corpus)
    corpus, tokenizer = tokenize(text, tc.tokenizer)
    check_corpus(corpus, cfg, tc, tokenizer)
    with run_lock(out, wait=False):
        created = not out.exists()
        try:
            _writable_folder(out)
            run = _stored_run(out, cfg, tc, text, tokenizer, resume, force)
            replacing = force and existing_run(out)
            return _train(out, cfg, tc, corpus, tokenizer, run, progress, smear, replacing)
        except BaseException:
            if created and not run_file(out).exists():   # a start that saved nothing leaves nothing
                snapshot_file(out, 0).unlink(missing_ok=True)
                _remove_if_empty(out)
            raise


def _train(out, cfg, tc, corpus, tokenizer, run, progress, smear, replacing=False):
    tokens_per_step = tc.batch_size * cfg.n_ctx
    total_steps = max(1, math.ceil(tc.total_tokens / tokens_per_step))
    schedule = snapshot_schedule(total_steps, tc.snapshots, tc.snapshot_spacing)
    optimizer = AdamW(betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    rng = np.random.default_rng(tc.seed + 1)
    log = {k: [] for k in LOG_KEYS}
    snapshots, step, elapsed = [], 0, 0.0
    if run is not None:   # continue on tc.device, this call's (not the stored run's)
        model = Model(cfg, params=run.params(), device=tc.device, smear=smear)
        optimizer.state = {k: v if k == "step" else model.xp.asarray(v, dtype=model.dtype)
                           for k, v in run.optim_state.items()}
        rng.bit_generator.state = run.rng_state
        log = {k: list(v) for k, v in run.log.items()}
        snapshots = list(zip(run.snapshot_steps.tolist(), run.snapshot_tokens.tolist()))
        step = run.step
        elapsed = float(log["seconds"][-1]) if log["seconds"] else 0.0
        eval_tokens, token_counts = run.eval_tokens, run.token_counts
    else:
        model = Model(cfg, seed=tc.seed, device=tc.device, smear=smear)
        eval_tokens = eval_set(corpus, tc.n_eval, cfg.n_ctx, tc.eval_seed, tc.bos_first)
        token_counts = corpus.token_counts(cfg.d_vocab)
    frozen = set() if cfg.pos_trainable else {"pos_embed.W_pos"}
    # the threads this machine gives the step, stored as used (a GPU step is never split)
    tc = replace(tc, threads=resolve_threads(tc.threads, tc.batch_size) if model.xp is np else 1)
    if progress:
        print(f"{out}: {describe(corpus)} ({tc.tokenizer}); {total_steps} steps of {tokens_per_step} tokens, "
              f"{len(schedule)} snapshots", file=sys.stderr)
    bar = Progress(total_steps, tokens_per_step, enabled=progress, label=f"{out.name}: ")
    start = time.time() - elapsed
    loss = lr = None

    def save_state(folder):
        host = {k: to_numpy(v) for k, v in model.params.items()}
        if not all(np.isfinite(v).all() for v in host.values()):
            diverged(f"the weights hold NaN or infinite values at step {step} (loss {loss})")
        save_snapshot(folder, step, step * tokens_per_step, host)
        opt_state = {k: to_numpy(v) for k, v in optimizer.state.items()}
        save_npz(run_file(folder), run_arrays(
            cfg.to_dict(), tc.to_dict(), {"name": corpus.name, "sha256": corpus.sha256},
            eval_tokens, token_counts, log, snapshots + [(step, step * tokens_per_step)], host,
            opt_state, step, step * tokens_per_step, rng.bit_generator.state, tokenizer))
        snapshots.append((step, step * tokens_per_step))
        saved.add(step)
        bar.snapshot(step, loss, lr)

    def diverged(what):
        bar.done()
        kept = (f"the run keeps its last finite state, step {snapshots[-1][0]}" if snapshots
                else "nothing was saved")
        raise ValueError(f"{out}: training diverged: {what}; stopped there, {kept}; "
                         f"try a smaller lr (now {tc.lr:g})")

    saved = {s for s, _ in snapshots}
    while True:
        if step in schedule and step not in saved:
            if replacing:   # --force: the old run stays until this first state is complete
                staging = out / STAGING
                try:
                    staging.mkdir(exist_ok=True)
                    save_state(staging)
                    _replace_run(out, staging)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                replacing = False
            else:
                save_state(out)
        if step >= total_steps:
            break
        tokens = random_crops(corpus.train, tc.batch_size, cfg.n_ctx, rng, tc.bos_first)
        if tc.repeat_fraction:
            repeat_spans(tokens, tc.repeat_fraction, rng)
        if tc.synthetic_fraction:
            random_repeat_windows(tokens, tc.synthetic_fraction, rng, d_vocab=cfg.d_vocab)
        lr = learning_rate(step, tc.lr, tc.warmup_steps, total_steps, tc.schedule)
        with warnings.catch_warnings():   # a diverging step's overflow: said in one line below
            warnings.filterwarnings("ignore", "(overflow|invalid value|divide by zero)", RuntimeWarning)
            loss, grad_norm = to_floats(*train_step(model, optimizer, tokens, lr, tc.grad_clip,
                                                    frozen, tc.threads))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            diverged(f"step {step + 1} has loss {loss:g}, gradient norm {grad_norm:g}")
        step += 1
        for key, value in zip(LOG_KEYS, (step, step * tokens_per_step, loss, lr, grad_norm,
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
               "n_layers=3 lr=1e-3 total_tokens=5e6 smeared_key=true; tokenizer=bpe:2048 learns a "
               "BPE vocabulary from the corpus (cached; d_vocab follows it). Presets: " + ", ".join(PRESETS))
    parser.add_argument("--preset", default="attn-only-2l", help="named settings (default attn-only-2l)")
    parser.add_argument("--out", required=True, help="run directory to write, e.g. runs/attn-only-2l")
    parser.add_argument("--corpus", help="text file or folder, 'stdlib' (the built-in Python "
                                         "standard library source), 'pydocs' (the prose of "
                                         "Python's documentation: make pydocs), or "
                                         "synthetic:repeated|template")
    add_device_argument(parser, default=None)   # None: the preset's (cpu); --resume follows it too
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--force", action="store_true", help="replace the run in --out (its run.npz and snapshots only; "
                             "the old run stays until the new run's first state is written)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_arguments(argv=None):
    """The command's flags, and its key=value overrides from both sides of any flag, in
    order. argparse alone (parse_intermixed_args included, on some Python versions) leaves
    a key=value that follows a flag after other key=values "unrecognized"; here such words
    join the overrides, and an unknown flag is still argparse's error."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [word for word in rest if word.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + rest   # the positional takes the first run of them
    return args


def _interrupted(out, force, started):
    """What to do after Ctrl-C, from what the run's folder holds now."""
    saved = run_file(out) if os.path.isdir(out) else None
    if saved is not None and saved.exists() and (not force or saved.stat().st_mtime >= started):
        return (f"interrupted; the run in {out} continues from its last snapshot with the same "
                f"command and --resume" + (" in place of --force" if force else ""))
    if force and saved is not None and saved.exists():
        return (f"interrupted before the new run's first state was saved; {out} still holds "
                f"the old run, unchanged")
    return ("interrupted before anything was saved; nothing to resume: run the same command "
            "again (without --resume)")


def main(argv=None):
    tolerant_streams()   # a path the terminal's encoding cannot show is escaped, not a crash
    args = parse_arguments(argv)
    started = time.time()
    try:
        model, train_config = preset(args.preset)
        for flag in ("corpus", "device"):
            if getattr(args, flag) is not None:
                train_config[flag] = getattr(args, flag)
        apply_overrides(model, train_config, args.overrides)
        with command_settings(blas=None):   # the step sets its own threads (TrainConfig.threads)
            run = train(args.out, model, train_config, resume=args.resume, force=args.force,
                        progress=not args.quiet)
    except ValueError as e:
        return error(e)
    except OSError as e:
        return os_error(e, args.out)
    except KeyboardInterrupt:
        print("\n" + _interrupted(args.out, args.force, started), file=sys.stderr)
        return 130
    final = run.log["loss"][-50:]
    print(f"{run.dir}: {run.step} steps, {run.tokens:,} "
          f"tokens, final train loss {np.mean(final):.4f}, {len(run.snapshot_steps)} snapshots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
