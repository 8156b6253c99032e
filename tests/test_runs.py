"""End-to-end on the tiny preset: train, snapshot, load, resume after a kill (bit-identical),
and the promised one-line errors for bad runs, files and flags."""
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

import minitransformer
from minitransformer.presets import preset
from minitransformer.runs import Run, read_npz, save_npz
from minitransformer.train import main, snapshot_schedule, train

TINY = preset("tiny")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(out, *TINY, progress=False)


def test_run_holds_what_the_format_promises(tiny_run):
    run = tiny_run
    assert run.snapshot_steps[0] == 0 and run.snapshot_steps[-1] == run.step
    assert len(run.snapshot_steps) == TINY[1]["snapshots"]
    assert run.eval_tokens.shape == (TINY[1]["n_eval"], TINY[0]["n_ctx"])
    assert len(run.log["loss"]) == run.step
    assert all((run.dir / "snapshots" / f"step_{s:07d}.npz").exists() for s in run.snapshot_steps)
    assert not list(run.dir.rglob("*.tmp"))


def test_load_latest_and_snapshot(tiny_run):
    latest = minitransformer.load(tiny_run.dir)
    first = minitransformer.load(tiny_run.path, step=0)
    fresh = minitransformer.Model(TINY[0], seed=TINY[1].get("seed", 0))
    assert np.array_equal(first.params["embed.W_E"], fresh.params["embed.W_E"])
    assert not np.array_equal(latest.params["embed.W_E"], first.params["embed.W_E"])
    last = int(tiny_run.snapshot_steps[-1])
    assert np.array_equal(minitransformer.load(tiny_run.dir, step=last).params["unembed.W_U"],
                          latest.params["unembed.W_U"])


def test_same_eval_set_for_every_run_of_the_same_seed(tiny_run, tmp_path):
    other = train(tmp_path / "other", TINY[0], dict(TINY[1], seed=5), progress=False)
    assert np.array_equal(other.eval_tokens, tiny_run.eval_tokens)


KILL_AT = pathlib.Path(__file__).with_name("kill_at.py")


def _command(out, *extra):
    return [sys.executable, "-m", "minitransformer.train", "--preset", "tiny", "--out", str(out),
            "--quiet", "total_tokens=120000", "snapshots=12", "threads=2", *extra]   # the split step


# Where the kill test kills a run (tiny, total_tokens=120000: 469 steps, snapshots at
# 0, 43, 85, 128, 171, 213, ..., 469; run.npz is written after each snapshot)
KILL_POINTS = {"before-the-first-run.npz": "step_0000000.npz:after-rename",
               "mid-snapshot": "step_0000213.npz:mid-write",
               "mid-run.npz": "run.npz#7:mid-write",
               "after-the-end": "run.npz#12:after-rename"}


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    whole = tmp_path_factory.mktemp("whole") / "whole"
    subprocess.run(_command(whole), check=True, timeout=300)
    return whole


@pytest.mark.parametrize("point", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_resume_after_kill_is_bit_identical(whole_run, tmp_path, point):
    """Kill a run at a chosen point (it kills itself there, tests/kill_at.py), resume it: it
    ends exactly where a run never interrupted ends, snapshots included."""
    killed = tmp_path / "killed"
    command = [sys.executable, str(KILL_AT), point] + _command(killed)[1:]
    assert subprocess.run(command, timeout=300).returncode == -signal.SIGKILL
    torn = list(killed.rglob("*.tmp"))
    assert len(torn) == (1 if "mid-write" in point else 0)
    subprocess.run(_command(killed, "--resume"), check=True, timeout=300)
    for name in ["run.npz"] + sorted(p.name for p in (whole_run / "snapshots").iterdir()):
        folder = "" if name == "run.npz" else "snapshots"
        a, b = read_npz(whole_run / folder / name), read_npz(killed / folder / name)
        assert sorted(a) == sorted(b), name
        for key in a:
            if key != "log.seconds":
                assert np.array_equal(a[key], b[key]), (name, key)
    assert sorted(p.name for p in (killed / "snapshots").iterdir()) == \
        sorted(p.name for p in (whole_run / "snapshots").iterdir())
    assert not list(killed.rglob("*.tmp"))


def test_existing_run_needs_resume_or_force(tiny_run, capsys):
    assert main(["--preset", "tiny", "--out", str(tiny_run.dir), "--quiet"]) == 2
    assert "already holds a run; --resume to continue it, or --force" in capsys.readouterr().err


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    assert main(["--preset", "tiny", "--out", str(tmp_path / "none"), "--resume", "--quiet"]) == 2
    assert "no run to resume" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["n_layer=3"], "unknown key 'n_layer'; valid keys: n_layers"),
    (["lr=fast"], "lr=fast: expected float"),
    (["smeared_key=maybe"], "smeared_key=maybe: expected true or false"),
    (["n_heads=-1"], "n_heads: must be a positive integer"),
    (["batch_size=0"], "batch_size: invalid value 0"),
    (["--preset", "huge"], "--preset 'huge': unknown"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, args, message):
    argv = ["--out", str(tmp_path / "r"), "--quiet"] + (args if args[0] == "--preset" else
                                                          ["--preset", "tiny"] + args)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--preset", "--out", "--corpus", "--device", "--resume", "--force", "key=value"):
        assert flag in text


def _copy_with(run, tmp_path, change):
    data = read_npz(run.path)
    change(data)
    path = tmp_path / "run.npz"
    save_npz(path, data)
    return path


def test_corrupt_truncated_and_wrong_version_files(tiny_run, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(tiny_run.path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"truncated.npz: not a readable .npz"):
        Run(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"garbage.npz: not a readable .npz"):
        Run(garbage)
    with pytest.raises(ValueError, match=r"nothing.npz: no such file"):
        Run(tmp_path / "nothing.npz")
    path = _copy_with(tiny_run, tmp_path, lambda d: d.update({"format_version": np.array(99)}))
    with pytest.raises(ValueError, match=r"run.npz: key 'format_version' is 99; this code reads version 1"):
        Run(path)
    path = _copy_with(tiny_run, tmp_path, lambda d: d.pop("eval_tokens"))
    with pytest.raises(ValueError, match=r"run.npz: missing key 'eval_tokens'"):
        Run(path)
    path = _copy_with(tiny_run, tmp_path, lambda d: d.update({"param.embed.W_E": np.zeros((3, 3))}))
    with pytest.raises(ValueError, match=r"run.npz: key 'param.embed.W_E' has shape \(3, 3\)"):
        Run(path).params()
    with pytest.raises(ValueError, match=r"no snapshot at step 7"):
        tiny_run.params(step=7)


def test_pickled_object_arrays_are_refused(tiny_run, tmp_path):
    path = tmp_path / "pickled.npz"
    data = read_npz(tiny_run.path)
    data["model_config"] = np.array([{"evil": 1}], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **data)
    with pytest.raises(ValueError, match="pickled.npz"):
        Run(path)


def test_snapshot_schedules():
    assert snapshot_schedule(1000, 5) == [0, 250, 500, 750, 1000]
    log = snapshot_schedule(10000, 20, "log")
    assert log[0] == 0 and log[-1] == 10000 and log[1] == 1 and np.all(np.diff(log) > 0)


def test_overrides_may_come_before_and_after_flags(tmp_path):
    assert main(["--preset", "tiny", "--out", str(tmp_path / "r"), "total_tokens=3000",
                 "--corpus", "synthetic:repeated", "seed=3", "--quiet"]) == 0
    assert Run(tmp_path / "r").train_config["seed"] == 3
