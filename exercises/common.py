"""What several exercises use: finite differences, the trained models to look at, and where
plots go. Exercises import it as `from exercises import common` (run them from the
repository root: python -m exercises.ex05_induction_stripe).

Two trained models, each made once and kept in exercises/_output/runs:
  trained_run()   the synthetic tiny-induction model (repeated random segments; ~1 minute),
                  trained on the first call: what every exercise of 05-17 studies.
  natural_run()   the natural-text 2-layer model of the README (the attn-only-2l preset: bytes
                  of the Python standard library, nothing planted), stopped at 8M tokens with
                  a snapshot every 0.5M: its induction head forms at ~3-5M tokens. Made by
                  `python -m exercises.common` (make natural-model; ~3-4 minutes on 2 cores),
                  or by a first natural_run(); exercises 06 and 16 show it beside the
                  synthetic one when it is there (natural_run(make=False)).
A run is returned only once finished: the lock of minitransformer.runs.run_lock is held
while one is checked, trained or resumed, so a second process (a second notebook) waits for
the first instead of reading a run still being written."""
import math
import pathlib
import sys
import time

import numpy as np

from minitransformer.gradcheck import finite_differences  # noqa: F401 (the exercises' tests use it)

HERE = pathlib.Path(__file__).resolve().parent
OUTPUT = HERE / "_output"          # plots and the cached trained model (git-ignored)


def gradient_check(forward, backward, inputs, dout):
    """Each gradient of backward(dout, cache) against central differences of forward(*inputs)
    -> {input name: max |analytic - numeric| / max |numeric|}. inputs: {name: float64 array},
    in forward's argument order; backward returns one gradient per input, in that order."""
    _, cache = forward(*inputs.values())
    analytic = dict(zip(inputs, backward(dout, cache)))
    errors = {}
    for name, value in inputs.items():
        numeric = finite_differences(lambda _: forward(*inputs.values())[0], value, dout)
        errors[name] = float(np.abs(analytic[name] - numeric).max() / np.abs(numeric).max())
    return errors


def print_gradient_check(errors, tolerance=1e-6):
    for name, error in errors.items():
        verdict = "ok" if error < tolerance else "WRONG"
        print(f"d{name:<4} max relative error against finite differences {error:.1e}  {verdict}")


def save(fig, name):
    """Lay out and write a figure to exercises/_output/<name>.png, and say where."""
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=100)
    print(f"plot: {plot_path(name)}")


def plot_path(name):
    """exercises/_output/<name>.png (the folder is made if needed)."""
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT / f"{name}.png"


def pyplot():
    """matplotlib.pyplot on the Agg backend (writes PNGs, needs no display); in a notebook
    on the notebook's own backend, so that the figures show there too."""
    import matplotlib
    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def trained_run(n_layers=2, smeared_key=False):
    """The tiny-induction preset (2-layer attention-only, d_model 128, 2 heads, n_ctx 64,
    repeated random segments, 800k tokens), trained on the first call and kept in
    exercises/_output/runs, where later calls find it. -> minitransformer.runs.Run."""
    from minitransformer.presets import preset
    name = f"tiny-induction-{n_layers}l" + ("-smeared" if smeared_key else "")
    model_config, train_config = preset("tiny-induction")
    model_config.update(n_layers=n_layers, smeared_key=smeared_key)
    return cached_run(name, model_config, train_config, took="about a minute on 2 cores")


NATURAL_NAME = "natural-2l"                   # exercises/_output/runs/natural-2l
NATURAL_PRESET = "attn-only-2l"               # the README's recipe (make train-2l), seed 0
# stopped at 8M of its 10M tokens (its lr is constant after warmup, so these are the first 8M
# tokens of that run), a snapshot every 0.5M: 17, from 0 to 8M
NATURAL_OVERRIDES = dict(total_tokens=8_000_000, snapshots=17)


def natural_settings():
    """(model config, train config) of the natural-text model: the attn-only-2l preset with
    NATURAL_OVERRIDES."""
    from minitransformer.presets import preset
    model_config, train_config = preset(NATURAL_PRESET)
    train_config.update(NATURAL_OVERRIDES)
    return model_config, train_config


def natural_run(make=True):
    """The natural-text 2-layer model (attn-only-2l: bytes of the Python standard library,
    nothing planted; 8M tokens, 17 snapshots), trained on the first call (~3-4 minutes on 2
    cores) and kept in exercises/_output/runs/natural-2l. make=False: None when it is not
    made yet, instead of training it. -> minitransformer.runs.Run."""
    model_config, train_config = natural_settings()
    return cached_run(NATURAL_NAME, model_config, train_config, make=make,
                      took="3-4 minutes on 2 cores", progress=True)


def natural_missing():
    """What to print where the natural-text model is not made yet."""
    return ("(not made yet: `python -m exercises.common` makes it once from the repository "
            "root, 3-4 minutes on 2 cores, or common.natural_run() in a notebook; then run "
            "this again)")


def cached_run(name, model_config, train_config, make=True, took="", progress=False):
    """The finished run of these settings in exercises/_output/runs/<name>: trained there
    (or resumed, if a run of them was killed) when it is missing, unfinished or of other
    settings. The run's lock is held throughout, so a second process waits for the first and
    never reads a run still being written. make=False: None instead of training."""
    from minitransformer.runs import run_lock
    from minitransformer.train import train
    out = OUTPUT / "runs" / name
    with run_lock(out, wait=True):
        run, resumable = finished_run(out, model_config, train_config)
        if run is not None or not make:
            return run
        print(f"training {name} once ({took}); later runs reuse {out}", flush=True)
        return train(out, model_config, train_config, resume=resumable, force=not resumable,
                     progress=progress)


def finished_run(out, model_config, train_config):
    """-> (the Run in `out` if it has these settings and all its steps, else None; whether a
    run of these settings is there to resume). Call it holding the run's lock."""
    from minitransformer.config import ModelConfig
    from minitransformer.runs import Run, as_train_config, run_file
    if not run_file(out).exists():
        return None, False
    try:
        run = Run(out)
    except ValueError:                 # unreadable: trained afresh
        return None, False
    if run.differing_settings(model_config, train_config):
        return None, False
    tc = as_train_config(train_config)
    n_ctx = ModelConfig.from_dict(model_config).n_ctx
    steps = max(1, math.ceil(tc.total_tokens / (tc.batch_size * n_ctx)))   # as train() takes
    return (run if run.step >= steps else None), True


def main():
    """python -m exercises.common (make natural-model): make the natural-text model once,
    then say where it is, what it holds and which head became the induction head."""
    from circuits import HeadScores
    from minitransformer.cpu import command_settings
    start = time.perf_counter()
    with command_settings(blas=None):      # as python -m minitransformer.train
        run = natural_run()
    took = time.perf_counter() - start
    files = [run.path] + sorted((run.dir / "snapshots").glob("step_*.npz"))
    size = sum(f.stat().st_size for f in files)
    print(f"{run.dir}: {run.tokens:,} training tokens of {run.corpus['name']} "
          f"(sha256 {run.corpus['sha256'][:12]}), {len(run.snapshot_steps)} snapshots at "
          + ", ".join(f"{t / 1e6:.1f}M" for t in run.snapshot_tokens)
          + f"; {size / 1e6:.1f} MB on disk; ready in {took:.0f} s")
    scores = HeadScores.of_run(run)
    for layer, head in zip(*np.nonzero(scores.classes == "induction")):
        print(f"induction head {layer}.{head}: prefix matching "
              f"{scores.prefix_matching[layer, head]:.2f}, "
              f"copying {scores.copying[layer, head]:.2f}")
    if not (scores.classes == "induction").any():
        print("no induction head at the end (HeadScores): not what the README's run shows")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
