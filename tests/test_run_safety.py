"""Nothing lost to a bad flag, a second process or a kill (issue 12): settings are checked
before anything is written or deleted, a run is locked while trained, and the CLI answers
every mistake with one line naming the culprit (exit 2, no traceback)."""
import fcntl
import os
import stat

import numpy as np
import pytest

from experiments import sweep
from minitransformer.presets import preset
from minitransformer.runs import Run, read_npz, save_npz
from minitransformer.train import main, train
from minitransformer.interventions import scale_heads

TINY = preset("tiny")
FLAGS = ["--preset", "tiny", "--quiet"]


@pytest.fixture
def tiny(tmp_path):
    """A finished tiny run, and its run.npz's bytes to check that nothing changed."""
    out = tmp_path / "tiny"
    train(out, *TINY, progress=False)
    return out, (out / "run.npz").read_bytes()


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_resume_refuses_other_settings_naming_them(tiny, capsys):
    out, before = tiny
    argv = FLAGS + ["--out", str(out), "--resume"]
    assert main(argv + ["total_tokens=80000", "batch_size=4", "n_ctx=16"]) == 2
    one_line_error(capsys, "differ from the stored run's", "batch_size (stored 8, given 4)",
                   "n_ctx (stored 32, given 16)", "total_tokens (stored 40000, given 80000)")
    assert main(argv + ["n_layers=5", "lr=1"]) == 2            # a finished run too
    one_line_error(capsys, "n_layers (stored 2, given 5)", "lr (stored 0.002, given 1.0)")
    assert main(["--out", str(out), "--resume", "--quiet"]) == 2   # --preset forgotten
    one_line_error(capsys, "settings that differ", "d_model (stored 32, given 128)")
    assert (out / "run.npz").read_bytes() == before
    assert main(argv) == 0                                      # the same settings: fine


def test_a_second_train_on_one_out_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    with open(tmp_path / ".r.lock", "w") as held:               # as a running train holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(FLAGS + ["--out", str(out), "seed=2"]) == 2
    one_line_error(capsys, "another process is working on this run", ".r.lock")
    assert not (out / "run.npz").exists()


@pytest.mark.parametrize("flags,culprit", [(["--corpus", "/nonexistent"], "/nonexistent"),
                                           (["seed=-1"], "seed: invalid value -1"),
                                           (["d_vocab=10"], "d_vocab=10"),
                                           (["n_heads=1000000", "d_head=1000"], "n_heads")])
def test_force_deletes_nothing_before_the_settings_are_valid(tiny, capsys, flags, culprit):
    out, before = tiny
    assert main(FLAGS + ["--out", str(out), "--force"] + flags) == 2
    one_line_error(capsys, culprit)
    assert (out / "run.npz").read_bytes() == before and len(Run(out).snapshot_steps) == 6


def test_sweep_keeps_only_a_run_of_every_same_setting(tiny):
    out, _ = tiny
    for setting in ("seed=3", "weight_decay=0.1", "grad_clip=0.5", "eval_seed=7", "lr=1e-3",
                    "warmup_steps=3", "beta2=0.9", "n_eval=8", "schedule=cosine"):
        job = sweep.Job(out.name, "tiny", (setting,))
        with pytest.raises(ValueError, match=f"other settings \\({setting.split('=')[0]} "):
            sweep.run_job(job, out.parent, measure=False, progress=False)
    assert "finished run kept" in sweep.run_job(sweep.Job(out.name, "tiny"), out.parent,
                                                measure=False, progress=False)


def test_a_start_killed_before_its_first_run_file_starts_again(tmp_path):
    out = tmp_path / "r"
    whole = train(tmp_path / "whole", *TINY, progress=False)
    (out / "snapshots").mkdir(parents=True)
    (out / "snapshots" / "step_0000000.npz").write_bytes(
        (whole.dir / "snapshots" / "step_0000000.npz").read_bytes())
    assert np.array_equal(train(out, *TINY, progress=False).params()["embed.W_E"],
                          whole.params()["embed.W_E"])


def test_a_vocabulary_smaller_than_the_corpus_writes_nothing(tmp_path, capsys):
    assert main(FLAGS + ["--out", str(tmp_path / "r"), "d_vocab=10"]) == 2
    one_line_error(capsys, "d_vocab=10: corpus 'synthetic:repeated' holds token 255")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["file", "under-file", "proc", "read-only"])
def test_out_where_no_run_can_be_written(tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    out = {"file": tmp_path / "file", "under-file": tmp_path / "file" / "r",
           "proc": "/proc/minitransformer-test/r", "read-only": tmp_path / "ro" / "r"}[where]
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o500)
    assert main(FLAGS + ["--out", str(out)]) == 2
    one_line_error(capsys, "cannot write a run there")


@pytest.mark.parametrize("flags,culprit", [
    (["total_tokens=1e400"], "total_tokens=1e400: expected int"),
    (["total_tokens=1e30"], "total_tokens: invalid value"),
    (["d_model=1e12"], "d_model"), (["n_ctx=1e9"], "n_ctx"), (["n_eval=1e9"], "n_eval, n_ctx"),
    (["n_heads=1000000", "d_head=16"], "n_heads"),
    (["--force", "--resume"], "--resume and --force: choose one"),
    (["--corpus", "SHORT"], "split has"),
])
def test_flags_that_used_to_end_in_tracebacks(tmp_path, capsys, flags, culprit):
    short = tmp_path / "short.txt"
    short.write_text("a few words\n" * 10)
    flags = [str(short) if f == "SHORT" else f for f in flags]
    assert main(FLAGS + ["--out", str(tmp_path / "r")] + flags) == 2
    one_line_error(capsys, culprit)


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(FLAGS + ["--out", ""]) == 2
    one_line_error(capsys, "--out: empty")
    assert not list(tmp_path.iterdir())


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr("minitransformer.train._train", interrupted)
    assert main(FLAGS + ["--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and "Traceback" not in err and "\n" not in err


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "a.npz"
        save_npz(path, {"x": np.zeros(2)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        save_npz(path, {"x": np.zeros(2)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert read_npz(path)["x"].shape == (2,)


def test_numpy_integers_in_a_config_are_accepted(tmp_path):
    model, train_config = TINY
    model = dict(model, n_layers=np.int64(1))
    run = train(tmp_path / "r", model, dict(train_config, total_tokens=np.int64(2000)), progress=False)
    assert run.config.n_layers == 1 and type(run.config.n_layers) is int


def test_the_python_api_answers_with_one_line_value_errors():
    from minitransformer import Model
    model = Model(TINY[0])
    for tokens in (np.zeros((2, 1), dtype=np.int64), np.zeros((0, 8), dtype=np.int64)):
        with pytest.raises(ValueError, match="a loss needs at least one sequence of at least 2"):
            model.loss_and_grads(tokens)
    params = {k: v.tolist() for k, v in model.params.items()}
    assert np.array_equal(Model(TINY[0], params=params).params["embed.W_E"], model.params["embed.W_E"])
    for bad in (dict(params, **{"embed.W_E": None}), [1, 2],
                dict(params, **{"embed.W_E": model.params["embed.W_E"] * 1j})):
        with pytest.raises(ValueError, match="params"):
            Model(TINY[0], params=bad)
    with pytest.raises(ValueError, match=r"hooks: 'blocks\.5\.attn\.hook_z' is not a hook point"):
        model.forward(np.zeros((1, 4), dtype=np.int64), hooks=scale_heads({5: np.zeros(2)}))


def test_the_first_progress_line_has_no_loss_yet():
    from minitransformer.train import Progress
    assert Progress(10, 256).line(0, None, None).endswith("starting")
