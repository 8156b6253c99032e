"""--force replaces a run, and nothing else (issue "Reliability, round 2", items 1 and 2): it
deletes only the files the run format names (run.npz, snapshots/step_XXXXXXX.npz), a run is
never written inside another run's folder, and the old run stays until the new run's first
state is complete: a full disk leaves it as it was."""
import errno
import os
import subprocess
import uuid

import numpy as np
import pytest

from minitransformer.presets import preset
from minitransformer.runs import Run, read_npz
from minitransformer.train import STAGING, main, train

TINY = preset("tiny")
FLAGS = ["--preset", "tiny", "--quiet"]


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def files_of(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_run(tmp_path):
    out = tmp_path / "A"
    train(out, *TINY, progress=False)
    return out


def test_a_run_inside_another_runs_folder_is_refused(old_run, capsys):
    for inner in (old_run / "snapshots" / "B", old_run / "B", old_run / "x" / "y"):
        assert main(FLAGS + ["--out", str(inner)]) == 2
        one_line_error(capsys, str(inner), f"inside the folder of the run {old_run}")
        assert not inner.exists()
    assert sorted(p.name for p in old_run.iterdir()) == ["run.npz", "snapshots"]


def test_force_deletes_only_the_files_the_run_format_names(old_run, tmp_path):
    # what a user (or an earlier version that allowed nesting) put in the run's folder
    keep = {"snapshots/B/run.npz": b"another run", "snapshots/notes.txt": b"mine",
            "snapshots/step_12.npz": b"not a snapshot name", "phase_change.json": b"{}",
            "measurements.npz": b"cache", "notes.md": b"mine too"}
    for name, data in keep.items():
        (old_run / name).parent.mkdir(parents=True, exist_ok=True)
        (old_run / name).write_bytes(data)
    assert main(FLAGS + ["--out", str(old_run), "--force", "seed=3"]) == 0
    for name, data in keep.items():
        assert (old_run / name).read_bytes() == data, name
    run = Run(old_run)
    assert run.train_config["seed"] == 3
    assert sorted(p.name for p in (old_run / "snapshots").glob("step_???????.npz")) == \
        [f"step_{s:07d}.npz" for s in run.snapshot_steps]
    assert not (old_run / STAGING).exists() and not list(old_run.rglob("*.tmp"))


def test_force_replaces_a_run_with_fewer_snapshots_leaving_none_of_the_old(old_run):
    assert main(FLAGS + ["--out", str(old_run), "--force", "snapshots=3", "total_tokens=3000"]) == 0
    run = Run(old_run)
    assert sorted(p.name for p in (old_run / "snapshots").iterdir()) == \
        [f"step_{s:07d}.npz" for s in run.snapshot_steps]
    assert len(run.snapshot_steps) == 3


def test_a_full_disk_during_force_leaves_the_old_run_intact(old_run, capsys, monkeypatch):
    """ENOSPC at the first file --force writes (simulated: os.fsync fails, as on a full disk)."""
    before = files_of(old_run)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    assert main(FLAGS + ["--out", str(old_run), "--force", "seed=3"]) == 2
    one_line_error(capsys, "No space left on device")
    monkeypatch.undo()
    assert files_of(old_run) == before
    assert Run(old_run).train_config["seed"] == 0 and Run(old_run).params(0)


def test_a_full_disk_after_the_first_file_leaves_the_old_run_intact(old_run, capsys, monkeypatch):
    """ENOSPC at the second file (run.npz, after the new snapshot 0 is written)."""
    before = files_of(old_run)
    fsync, calls = os.fsync, []

    def full_at_second(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)
    monkeypatch.setattr(os, "fsync", full_at_second)
    assert main(FLAGS + ["--out", str(old_run), "--force", "seed=3"]) == 2
    one_line_error(capsys, "No space left on device")
    monkeypatch.undo()
    assert files_of(old_run) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 1.6 MB tmpfs (root only): a tiny run fits, a d_model=128 one does not."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs",
                                            str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_force_on_a_really_full_disk_keeps_the_old_run(small_disk, capsys):
    out = small_disk / "A"
    train(out, *TINY, progress=False)
    before = files_of(out)
    argv = FLAGS + ["--out", str(out), "--force", "d_model=128", "d_head=64"]
    assert main(argv) == 2
    one_line_error(capsys, "No space left on device")
    assert files_of(out) == before
    run = Run(out)
    assert run.config.d_model == 32 and np.array_equal(
        run.params(0)["embed.W_E"], read_npz(out / "snapshots" / "step_0000000.npz")["param.embed.W_E"])
