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


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_before_anything_is_saved_says_to_start_again(tmp_path, capsys, monkeypatch):
    """Round 2, item 20: the advice was --resume, which then found no run to resume."""
    monkeypatch.setattr("minitransformer.train._train", _interrupt)
    out = tmp_path / "r"
    assert main(FLAGS + ["--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err
    assert "before anything was saved" in err and "without --resume" in err, err
    assert not out.exists()
    monkeypatch.undo()
    assert main(FLAGS + ["--out", str(out), "total_tokens=3000"]) == 0   # the advice works


def test_ctrl_c_after_a_snapshot_says_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("minitransformer.train.Progress.snapshot", _interrupt)   # after run.npz
    out = tmp_path / "r"
    assert main(FLAGS + ["--out", str(out), "total_tokens=3000"]) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "same command and --resume" in err, err
    monkeypatch.undo()
    assert main(FLAGS + ["--out", str(out), "total_tokens=3000", "--resume"]) == 0


def test_ctrl_c_during_force_before_the_new_state_keeps_the_old_run(tiny, capsys, monkeypatch):
    out, before = tiny
    monkeypatch.setattr("minitransformer.train._replace_run", _interrupt)
    assert main(FLAGS + ["--out", str(out), "--force", "seed=4"]) == 130
    err = capsys.readouterr().err.strip()
    assert "still holds the old run" in err and "\n" not in err, err
    assert (out / "run.npz").read_bytes() == before and not (out / ".force-new").exists()


def test_too_many_snapshots_means_every_step(tmp_path, capsys):
    """Round 2, item 5: snapshots=1e12 allocated a schedule of 1e12 steps (a traceback)."""
    out = tmp_path / "r"
    assert main(FLAGS + ["--out", str(out), "snapshots=1e12", "total_tokens=3000"]) == 0
    assert Run(out).snapshot_steps.tolist() == list(range(13))    # 12 steps of 256 tokens


@pytest.mark.parametrize("flags", [["--resume"], ["n_layers=1", "--resume"]])
def test_a_refused_start_leaves_no_folder(tmp_path, capsys, flags):
    out = tmp_path / "new" / "r"
    assert main(FLAGS + ["--out", str(out)] + flags) == 2
    one_line_error(capsys, "no run to resume")
    assert not out.exists()


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, capsys):
    """Round 2, item 13: lr=1e30 trained every step on NaN, then every tool refused the run."""
    out = tmp_path / "r"
    assert main(FLAGS + ["--out", str(out), "lr=1e30"]) == 2
    err = one_line_error(capsys, "training diverged", "loss nan", "last finite state, step 0",
                         "lr (now 1e+30)")
    assert "RuntimeWarning" not in err
    run = Run(out)                                   # the run loads: its last finite state
    assert run.step == 0 and np.isfinite(run.params(0)["embed.W_E"]).all()
    assert main(FLAGS + ["--out", str(out), "lr=1e30", "--resume"]) == 2   # resumes, stops again
    one_line_error(capsys, "training diverged")
    assert main(FLAGS + ["--out", str(out), "--force", "total_tokens=3000"]) == 0


def test_snapshots_before_a_divergence_are_kept(tmp_path, capsys, monkeypatch):
    from minitransformer import train as train_module
    real = train_module.to_floats
    calls = []

    def nan_at_step_40(*values):
        calls.append(1)
        loss, norm = real(*values)
        return (float("nan") if len(calls) == 40 else loss), norm
    monkeypatch.setattr(train_module, "to_floats", nan_at_step_40)
    out = tmp_path / "r"
    assert main(FLAGS + ["--out", str(out)]) == 2        # tiny: snapshots 0, 31, 63, ...
    one_line_error(capsys, "step 40 has loss nan", "last finite state, step 31")
    run = Run(out)
    assert run.snapshot_steps.tolist() == [0, 31] and run.step == 31
    assert np.isfinite(run.log["loss"]).all() and run.params(31)


def test_none_is_a_positional_embedding_type(tmp_path):
    """Round 2, item 15: 'none' was parsed as Python's None."""
    from minitransformer.presets import apply_overrides
    model, train_config = preset("tiny")
    apply_overrides(model, train_config, ["positional_embedding_type=none"])
    assert model["positional_embedding_type"] == "none"
    model, train_config = preset("attn-only-ln-2l")
    apply_overrides(model, train_config, ["normalization_type=none", "d_head=None"])
    assert model["normalization_type"] is None and model["d_head"] is None
    assert main(FLAGS + ["--out", str(tmp_path / "r"), "positional_embedding_type=none",
                         "total_tokens=3000"]) == 0
    assert Run(tmp_path / "r").config.positional_embedding_type == "none"


def test_overrides_on_both_sides_of_a_flag_whatever_argparse_does(tmp_path, monkeypatch):
    """Round 2, item 16: a key=value after --quiet was 'unrecognized' where argparse's
    parse_intermixed_args does not gather it (not on Python 3.11.7; some other versions):
    the command no longer depends on it (here it behaves like parse_args)."""
    import argparse
    monkeypatch.setattr(argparse.ArgumentParser, "parse_intermixed_args",
                        argparse.ArgumentParser.parse_args)
    out = tmp_path / "x"
    assert main(["--preset", "tiny", "--out", str(out), "lr=1e-3", "--quiet",
                 "total_tokens=3000", "--corpus", "synthetic:repeated", "seed=2"]) == 0
    stored = Run(out).train_config
    assert (stored["lr"], stored["total_tokens"], stored["seed"]) == (1e-3, 3000, 2)
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "tiny", "--out", str(out), "a=1", "--bogus", "b=2"])
    assert exit_.value.code == 2


def test_a_path_the_terminal_cannot_encode_is_escaped(tmp_path):
    """Round 2, item 11: PYTHONIOENCODING=ascii and a non-ASCII --out ended in a
    UnicodeEncodeError at the final print (and at an error's)."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    out = tmp_path / "r\u00e9sum\u00e9"
    command = [sys.executable, "-m", "minitransformer.train", "--out", str(out)] + FLAGS
    done = subprocess.run(command + ["total_tokens=3000"], env=env, capture_output=True,
                          text=True, encoding="ascii", errors="strict", timeout=300)
    assert done.returncode == 0 and "r\\xe9sum\\xe9: 12 steps" in done.stdout, done.stderr
    done = subprocess.run(command + ["total_tokens=3000"], env=env, capture_output=True,
                          text=True, encoding="ascii", errors="strict", timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "r\\xe9sum\\xe9: already holds a run" in done.stderr


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


@pytest.mark.parametrize("n_ctx", [1, 4])
def test_a_context_the_analyses_cannot_read_is_refused_before_anything_is_written(tmp_path, capsys, n_ctx):
    from minitransformer.train import main
    out = tmp_path / "short"
    assert main(["--preset", "tiny", "--out", str(out), "--quiet", f"n_ctx={n_ctx}"]) == 2
    err = capsys.readouterr().err
    assert f"n_ctx: {n_ctx} is too short to train a run the analyses can read (at least 5" in err
    assert "\n" not in err.strip() and not out.exists()
