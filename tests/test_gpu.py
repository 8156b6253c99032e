"""The GPU path: the same seed gives the same model on CuPy as on NumPy, and the same logits,
gradients, interventions, training runs, resumes and analysis commands within float32
tolerance. Each test runs on every GPU backend there is (the `gpu` fixture): the strict
fake CuPy of tests/fake_cupy.py always (CI), a real CuPy with a CUDA device where one is.

"Within float32 tolerance" is what the README's Backends section promises: the backends
round differently (the attention core whole on a GPU, in row blocks on NumPy; the
embedding backward's scatter-add sums a token's rows in another order; cuBLAS its own
order), so numbers agree to ~1e-6 relative after one pass, and training runs drift apart
slowly, as any two float32 implementations do."""
import json
import shutil

import numpy as np
import pytest
from numpy.testing import assert_allclose

from circuits import eigen, heads, patching
from experiments import measure, phase_change
from minitransformer import AdamW, Model, clip_grad_norm
from minitransformer.backend import array_module, to_numpy
from minitransformer.presets import preset
from minitransformer.runs import Run, read_npz
from minitransformer.train import Progress, main, train
from minitransformer.interventions import ablate_heads, combine, replay, scale_heads

import fake_cupy

CONFIGS = {"attn-only": dict(n_layers=2, attn_only=True),
           "mlp, smeared, standard positions": dict(n_layers=2, attn_only=False, smeared_key=True,
                                                    positional_embedding_type="standard"),
           "1 layer, no LayerNorm, smeared": dict(n_layers=1, normalization_type=None,
                                                  smeared_key=True)}
TINY_MODEL, TINY_TRAIN = preset("tiny")
SHORT = dict(TINY_TRAIN, total_tokens=12_800, snapshots=5)    # 50 steps, snapshots every 12-13


def pair(overrides, seed=3, **kwargs):
    cfg = dict(d_model=64, n_heads=4, n_ctx=96, d_vocab=256, **overrides)
    return Model(cfg, seed=seed, **kwargs), Model(cfg, seed=seed, device="gpu", **kwargs)


def tokens(B=4, T=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (B, T))


def assert_grads_close(gpu_grads, cpu_grads, tol=1e-4):
    """Each gradient within tol of its largest entry (a float32 backward on either side).
    b_K's is zero in exact arithmetic (the softmax ignores what it adds to a whole row of
    scores): on both sides it must be float32 noise, below 1e-6 of the largest gradient."""
    assert list(gpu_grads) == list(cpu_grads)
    largest = max(np.abs(g).max() for g in cpu_grads.values())
    for name, g in cpu_grads.items():
        ours = to_numpy(gpu_grads[name])
        if name.endswith("attn.b_K"):
            assert max(np.abs(ours).max(), np.abs(g).max()) < 1e-6 * largest, name
            continue
        if not g.any():     # nothing flows there (the queries and keys of a replayed pattern)
            assert not ours.any(), name
            continue
        error = np.abs(ours - g).max() / np.abs(g).max()
        assert error < tol, (name, error)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_gpu_matches_numpy(gpu, overrides):
    cpu, dev = pair(overrides)
    assert all(array_module(p) is gpu for p in dev.params.values())
    for name, p in cpu.params.items():                  # initialised on the host, then moved
        assert np.array_equal(to_numpy(dev.params[name]), p), name
    x = tokens()
    assert_allclose(dev.forward(x), cpu.forward(x), rtol=1e-4, atol=1e-4)
    loss_cpu, grads_cpu = cpu.loss_and_grads(x)
    loss_gpu, grads_gpu = dev.loss_and_grads(x)
    assert isinstance(loss_gpu, float) and abs(loss_cpu - loss_gpu) < 1e-4
    assert all(array_module(g) is gpu for g in grads_gpu.values())
    assert_grads_close(grads_gpu, grads_cpu)
    # tokens already on the device give the same numbers as host tokens
    assert dev.loss_and_grads(gpu.asarray(x))[0] == loss_gpu


def test_gpu_rejects_out_of_range_tokens(gpu):
    """CuPy would wrap an out-of-range index silently; the model refuses it first, whether
    the tokens come from the host or are on the device already."""
    model = Model(dict(n_layers=1, d_model=16, n_heads=2, d_vocab=10, n_ctx=8), device="gpu")
    for bad in (np.array([[1, 10]]), gpu.asarray(np.array([[1, 10]])), np.array([[-1, 3]])):
        with pytest.raises(ValueError, match=r"tokens: ids must lie in \[0, 10\)"):
            model.forward(bad)


INTERVENTIONS = {
    "ablate_heads": lambda cache: dict(hooks=ablate_heads([(0, 1), (1, 3)])),
    "scale_heads (H,)": lambda cache: dict(hooks=scale_heads({1: np.array([1.0, 0.0, 0.5, 1.0])})),
    "scale_heads (B,H)": lambda cache: dict(hooks=scale_heads({0: np.eye(4)})),
    "patterns replayed, pattern-preserving": lambda cache: dict(hooks=combine(
        replay(cache, [k for k in cache if k.endswith("hook_pattern")]), ablate_heads([(0, 2)]))),
    "z replayed": lambda cache: dict(hooks=combine(replay(cache, ["blocks.0.attn.hook_z"]),
                                                   ablate_heads([(0, 1)]))),
    "start_at_layer, z replayed": lambda cache: dict(
        hooks=combine(replay(cache, ["blocks.1.attn.hook_z"]), ablate_heads([(1, 2)])),
        start_at_layer=1, resid_pre=cache["blocks.1.hook_resid_pre"]),
    "hook_z replaced": lambda cache: dict(hooks={"blocks.1.attn.hook_z": _zero_head_2}),
    "hook_attn_scores replaced": lambda cache: dict(
        hooks={"blocks.0.attn.hook_attn_scores": lambda a, name: a * 0.5}),
    "hook_resid_post replaced": lambda cache: dict(
        hooks={"blocks.0.hook_resid_post": lambda a, name: cache[name]}),
}


def _zero_head_2(z, name):          # z (B,T,H,E), on the model's device
    z = z.copy()
    z[:, :, 2] = 0.0
    return z


@pytest.mark.parametrize("name", INTERVENTIONS)
def test_interventions_match_numpy(gpu, name):
    cpu, dev = pair(CONFIGS["attn-only"])
    _, other = cpu.run_with_cache(tokens(seed=1))
    kwargs = INTERVENTIONS[name](other)
    x = tokens()
    assert_allclose(dev.forward(x, **kwargs), cpu.forward(x, **kwargs), rtol=1e-4, atol=1e-4)
    assert_allclose(dev.per_token_loss(x, **kwargs), cpu.per_token_loss(x, **kwargs),
                    rtol=1e-4, atol=1e-4)
    if "replaced" not in name and "start_at_layer" not in kwargs:   # gradients run through the
        # head scales and the replayed patterns and head outputs
        hooks = kwargs["hooks"]
        assert_grads_close(dev.loss_and_grads(x, hooks)[1], cpu.loss_and_grads(x, hooks)[1])


def test_run_with_cache_and_reading_hooks_match_numpy(gpu):
    cpu, dev = pair(CONFIGS["mlp, smeared, standard positions"])
    x = tokens()
    logits, cache = dev.run_with_cache(x)
    expected_logits, expected = cpu.run_with_cache(x)
    assert list(cache) == list(expected) == dev.hook_names()
    assert all(isinstance(v, np.ndarray) for v in cache.values())    # host arrays, as documented
    assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)
    for name, value in expected.items():
        assert_allclose(cache[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
    seen = {}
    dev.forward(x, hooks={name: lambda a, name: seen.update({name: array_module(a)})
                          for name in dev.hook_names()})
    assert set(seen.values()) == {gpu}          # a hook sees device arrays


def short_run(out, device, **interventions):
    return train(out, TINY_MODEL, dict(SHORT, device=device, **interventions), progress=False)


def assert_runs_close(ours, reference):
    """Same steps and snapshots; losses, gradient norms and the final weights within float32
    tolerance of an uninterrupted CPU run's. But b_K: its gradient is float32 noise (see
    assert_grads_close), which Adam scales to steps of lr, so it wanders differently on each
    backend, changing no output of the model."""
    ours, reference = Run(ours), Run(reference)
    assert ours.snapshot_steps.tolist() == reference.snapshot_steps.tolist()
    assert np.array_equal(ours.eval_tokens, reference.eval_tokens)
    for key in ("step", "tokens", "lr"):
        assert np.array_equal(ours.log[key], reference.log[key]), key
    assert_allclose(ours.log["loss"], reference.log["loss"], rtol=1e-4)
    assert_allclose(ours.log["grad_norm"], reference.log["grad_norm"], rtol=1e-3)
    for name, p in reference.params().items():
        if not name.endswith("attn.b_K"):
            assert_allclose(ours.params()[name], p, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    return short_run(tmp_path_factory.mktemp("cpu") / "run", "cpu").dir


def test_training_on_the_gpu_matches_the_cpu(gpu, cpu_run, tmp_path):
    run = short_run(tmp_path / "gpu", "gpu")
    assert run.train_config["device"] == "gpu"
    assert_runs_close(run.dir, cpu_run)


def test_train_command_with_device_gpu(gpu, cpu_run, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--preset", "tiny", "--out", str(out), "--quiet", "--device", "gpu",
            "total_tokens=12800", "snapshots=5"]
    with fake_cupy.counting() as counts:
        assert main(argv) == 0
    assert "50 steps" in capsys.readouterr().out
    assert_runs_close(out, cpu_run)
    if gpu is fake_cupy.cupy:
        assert counts.n_launches > 0, "the run did not compute on the fake GPU"


def interrupted(monkeypatch, out, device, snapshots=3):
    """A run in `out` stopped right after its `snapshots`-th snapshot was written, as a kill
    there leaves it."""
    class Stop(Exception):
        pass
    written = []

    def stop_after(self, step, loss, lr):
        written.append(step)
        if len(written) == snapshots:
            raise Stop
    with monkeypatch.context() as m:
        m.setattr(Progress, "snapshot", stop_after)
        with pytest.raises(Stop):
            short_run(out, device)
    assert Run(out).step == written[-1] > 0


@pytest.mark.parametrize("first,then", [("cpu", "gpu"), ("gpu", "cpu")])
def test_resume_honours_device_in_both_directions(gpu, cpu_run, tmp_path, monkeypatch, capsys,
                                                  first, then):
    """A run started on one backend and resumed with --device on the other continues on
    the one asked for (not the stored run's), and ends where an uninterrupted CPU run ends,
    within float32 tolerance."""
    out = tmp_path / "run"
    interrupted(monkeypatch, out, first)
    argv = ["--preset", "tiny", "--out", str(out), "--quiet", "--resume", "total_tokens=12800",
            "snapshots=5"] + (["--device", then] if then == "gpu" else [])   # cpu: the default
    with fake_cupy.counting() as counts:
        assert main(argv) == 0, capsys.readouterr().err
    assert Run(out).train_config["device"] == then
    if gpu is fake_cupy.cupy:
        assert (counts.n_launches > 0) == (then == "gpu"), counts.report()
    assert_runs_close(out, cpu_run)


# ---- the analysis commands with --device ----------------------------------------------------

@pytest.fixture(scope="module")
def analysed(tmp_path_factory, cpu_run):
    """Two copies of the CPU run: each command's caches (losses, measurements) are its own."""
    root = tmp_path_factory.mktemp("analysis")
    return {device: shutil.copytree(cpu_run, root / device) for device in ("cpu", "gpu")}


def assert_json_close(ours, expected, path="", rel=1e-4, abs_=1e-5):
    """Nested JSON values equal, numbers within tolerance."""
    if isinstance(expected, dict):
        assert list(ours) == list(expected), path
        for key in expected:
            assert_json_close(ours[key], expected[key], f"{path}.{key}", rel, abs_)
    elif isinstance(expected, list):
        assert len(ours) == len(expected), path
        for i, (a, b) in enumerate(zip(ours, expected)):
            assert_json_close(a, b, f"{path}[{i}]", rel, abs_)
    elif isinstance(expected, float) and not isinstance(ours, str):
        assert ours == pytest.approx(expected, rel=rel, abs=abs_, nan_ok=True), path
    else:
        assert ours == expected, path


def assert_models_on(gpu, device, counts):
    """On the fake: the command built its models on the GPU exactly when asked to (their
    weights were copied to the device: uploads)."""
    if gpu is fake_cupy.cupy:
        assert (counts.uploads > 0) == (device == "gpu"), counts.report()


COMMANDS = {"circuits.heads": (heads.main, ["--json", "--ablate", "--all-steps"]),
            "circuits.eigen": (eigen.main, ["--json", "--all-steps"]),
            "circuits.patching": (patching.main, ["--json", "--pairs", "4"])}


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_circuits_commands_with_device_gpu(gpu, analysed, capsys, tmp_path, command):
    main_, argv = COMMANDS[command]
    outputs = {}
    for device, run in analysed.items():
        extra = ["--plot", str(tmp_path / f"{device}.png")] if command.endswith("patching") else []
        with fake_cupy.counting() as counts:
            assert main_([str(run), "--device", device, *argv, *extra]) == 0
        outputs[device] = json.loads(capsys.readouterr().out)
        assert_models_on(gpu, device, counts)
    for result in outputs.values():       # where the run is, which differs between the copies
        if isinstance(result, dict):
            result.pop("run"), result.pop("plot")
    assert_json_close(outputs["gpu"], outputs["cpu"])


def test_experiments_commands_with_device_gpu(gpu, analysed, capsys):
    for device, run in analysed.items():
        with fake_cupy.counting() as counts:
            assert measure.main([str(run), "--device", device]) == 0
            assert phase_change.main([str(run), "--device", device, "--points", "3"]) == 0
        assert_models_on(gpu, device, counts)
    capsys.readouterr()
    ours, expected = (read_npz(analysed[d] / "measurements.npz") for d in ("gpu", "cpu"))
    assert sorted(ours) == sorted(expected)
    for key, value in expected.items():
        if value.dtype.kind == "f":
            assert_allclose(ours[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
        else:
            assert np.array_equal(ours[key], value), key
    assert_json_close(*(json.loads((analysed[d] / "phase_change.json").read_text())
                        for d in ("gpu", "cpu")))


def test_a_gpu_that_is_absent_is_a_one_line_error(capsys, analysed, monkeypatch):
    monkeypatch.setattr("minitransformer.backend._cupy", lambda: (None, "CuPy is not installed"))
    for main_ in (heads.main, eigen.main, measure.main, phase_change.main):
        assert main_([str(analysed["cpu"]), "--device", "gpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: device: 'gpu' asked for, but CuPy is not installed", err


def test_clipping_and_adamw_on_the_gpu_match_numpy(gpu):
    """From the same gradients, the clipped norm and three AdamW steps (decay on) agree with
    NumPy's to float32 rounding: elementwise work, done in the same order."""
    cpu, dev = pair(CONFIGS["attn-only"])
    opt_cpu, opt_gpu = AdamW(weight_decay=0.1), AdamW(weight_decay=0.1)
    for step in range(3):
        grads = cpu.loss_and_grads(tokens(seed=step))[1]
        moved = {k: gpu.asarray(g) for k, g in grads.items()}
        norms = clip_grad_norm(grads, 0.5), clip_grad_norm(moved, 0.5)
        assert float(norms[1]) == pytest.approx(float(norms[0]), rel=1e-12) and float(norms[0]) > 0.5
        opt_cpu.step(cpu.params, grads, 1e-3)
        opt_gpu.step(dev.params, moved, 1e-3)
    for name, p in cpu.params.items():
        assert_allclose(to_numpy(dev.params[name]), p, rtol=1e-6, atol=1e-9, err_msg=name)
        for moment in ("m.", "v."):
            assert_allclose(to_numpy(opt_gpu.state[moment + name]), opt_cpu.state[moment + name],
                            rtol=1e-5, atol=1e-12, err_msg=moment + name)


def test_sweep_job_and_report_with_device_gpu(gpu, tmp_path):
    """A sweep job trained and measured with device gpu, and the report's loading of it,
    compute on the GPU and give the CPU's table row within float32 tolerance."""
    from experiments import report, sweep
    job = sweep.Job("tiny", "tiny", ("total_tokens=12800", "snapshots=5"), "attn-only")
    rows = {}
    for device in ("cpu", "gpu"):
        root = tmp_path / device
        with fake_cupy.counting() as counts:
            sweep.run_job(job, root, measure=False, progress=False, device=device)
            models, missing = report.load(root, [job], log=None, device=device)
        assert missing == [] and Run(root / "tiny").train_config["device"] == device
        assert_models_on(gpu, device, counts)
        rows[device] = models["tiny"]
    assert_allclose(rows["gpu"].icl, rows["cpu"].icl, rtol=1e-3, atol=1e-3)
    assert_allclose(rows["gpu"].eval_loss, rows["cpu"].eval_loss, rtol=1e-3)
    assert sweep.build_parser().parse_args(["--device", "gpu"]).device == "gpu"
