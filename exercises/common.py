"""What several exercises use: finite differences, a trained model to look at, and where
plots go. Exercises import it as `from exercises import common` (run them from the
repository root: python -m exercises.ex05_induction_stripe)."""
import pathlib
import sys

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
    from minitransformer.runs import Run, run_file
    from minitransformer.train import train
    name = f"tiny-induction-{n_layers}l" + ("-smeared" if smeared_key else "")
    out = OUTPUT / "runs" / name
    if run_file(out).exists():
        return Run(out)
    model_config, train_config = preset("tiny-induction")
    model_config.update(n_layers=n_layers, smeared_key=smeared_key)
    print(f"training {name} once (about a minute on 2 cores); later runs reuse {out}")
    return train(out, model_config, train_config, force=True, progress=False)
