"""Reliability, round 2: the analyses on a context too short for them (item 6), measurements
that cannot be written (7) or that do not fit the run (14, and a fuzz of the cache reader),
make_notebooks' --out (9), phase_change's data line and --control (18), heads --plot without
--validate (19), the file named on a full disk (20). Each answer is one line, exit status 2."""
import contextlib
import errno
import os
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuits import eigen, heads
from circuits.evaluators import MIN_N_CTX, prefix_matching_score, require_n_ctx
from experiments import measure, phase_change
from exercises import make_notebooks
from minitransformer.config import ModelConfig
from minitransformer.model import Model
from minitransformer.presets import preset
from minitransformer.runs import save_npz
from minitransformer.train import train

from handmade_run import write_run  # noqa: E402

TINY = dict(total_tokens=3000, snapshots=3, n_eval=8, threads=1)


def one_line_error(capsys, *fragments):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert all(f in err for f in fragments), err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, train_config = preset("tiny")
    return train(tmp_path_factory.mktemp("rel") / "tiny", model, {**train_config, **TINY},
                 progress=False)


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    model, train_config = preset("tiny")
    return train(tmp_path_factory.mktemp("rel") / "one", {**model, "n_layers": 1},
                 {**train_config, **TINY}, progress=False)


# ---- 6: n_ctx too short for the head scores ----------------------------------------------

@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A run of n_ctx 4 written without training (training may refuse it)."""
    model, _ = preset("tiny")
    try:
        config = ModelConfig.from_dict({**model, "n_ctx": 4})
    except ValueError as e:
        pytest.skip(f"n_ctx 4 refused by the configuration itself: {e}")
    models = {step: Model(config, seed=step) for step in (0, 10)}
    eval_tokens = np.random.default_rng(0).integers(1, config.d_vocab, (8, 4))
    return write_run(tmp_path_factory.mktemp("rel") / "short", models, eval_tokens)


def test_the_minimum_context_is_named_by_the_scores():
    assert MIN_N_CTX == 5
    require_n_ctx(5)
    with pytest.raises(ValueError, match=r"n_ctx 4 is too short for .*n_ctx >= 5"):
        require_n_ctx(4)
    stand_in = SimpleNamespace(config=SimpleNamespace(n_ctx=4, d_vocab=32))
    with pytest.raises(ValueError, match="n_ctx 4 .* prefix_matching_score"):
        prefix_matching_score(stand_in)


@pytest.mark.parametrize("tool, argv", [
    (heads.main, []), (eigen.main, []), (measure.main, []),
    (phase_change.main, ["--points", "2", "--png", "{tmp}/p.png"])])
def test_every_analysis_refuses_a_context_too_short(short_run, tmp_path, capsys, tool, argv):
    code = tool([str(short_run)] + [a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    one_line_error(capsys, "n_ctx 4", ">= 5")


# ---- 7: measurements that cannot be written ----------------------------------------------

def test_measure_checks_its_file_before_computing(tiny, capsys, monkeypatch):
    path = measure.measurement_file(tiny)
    path.unlink(missing_ok=True)
    path.mkdir()                                      # a folder in its place
    computed = []
    monkeypatch.setattr(measure, "snapshot_losses", lambda *a: computed.append(a))
    try:
        assert measure.main([str(tiny.dir)]) == 2
        one_line_error(capsys, str(path), "cannot write")
        assert not computed
    finally:
        path.rmdir()
    real_access = os.access                            # a read-only run folder (root writes anyway)
    monkeypatch.setattr(measure.os, "access", lambda p, mode: False if pathlib.Path(p) == tiny.dir
                        else real_access(p, mode))
    assert measure.main([str(tiny.dir)]) == 2
    one_line_error(capsys, str(path), "not a writable folder")
    assert not computed


def test_report_names_the_measurements_it_cannot_write_not_its_out(tiny, tmp_path, capsys,
                                                                   monkeypatch):
    from experiments import report
    path = measure.measurement_file(tiny)
    path.unlink(missing_ok=True)
    path.mkdir()                                      # a folder in its place
    monkeypatch.setattr(report, "build", lambda *a, **k: measure.measure_run(tiny))
    (tmp_path / "root").mkdir()
    try:
        assert report.main(["--root", str(tmp_path / "root"), "--out", str(tmp_path / "r")]) == 2
        err = one_line_error(capsys, str(path), "cannot write")
        assert "--out" not in err
    finally:
        path.rmdir()


def test_measure_on_a_full_disk_names_its_file(tiny, capsys, monkeypatch):
    def full(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))     # fsync's: no file name
    monkeypatch.setattr(measure.Measurements, "write", full)
    assert measure.main([str(tiny.dir), "--force"]) == 2
    one_line_error(capsys, str(measure.measurement_file(tiny)), "No space left on device")


# ---- 14: a cache that does not fit the run, and the fuzz of its reader -------------------

@pytest.fixture(scope="module")
def measured(tiny):
    m = measure.measure_run(tiny)
    return {f: np.asarray(getattr(m, f)) for f in (x.name for x in measure.dataclasses.fields(m))}


def test_a_cache_of_the_wrong_shapes_is_measured_again(tiny, measured, tmp_path):
    path = tmp_path / "measurements.npz"
    arrays = dict(measured, prefix_matching=np.zeros((len(tiny.snapshot_steps), 1, 4)))
    save_npz(path, arrays)
    assert measure.cached_measurements(tiny, path) is None
    lines = []
    assert measure.cached_measurements(tiny, path, lines.append) is None
    assert len(lines) == 1 and str(path) in lines[0] and "'prefix_matching'" in lines[0]
    save_npz(path, dict(measured, n_heads=np.array(3)))
    assert measure.cached_measurements(tiny, path, lines.append) is None
    assert "n_heads" in lines[-1]
    save_npz(path, measured)                         # and the cache as written is read back
    assert measure.cached_measurements(tiny, path) is not None


_ARRAYS = st.one_of(
    st.integers(-3, 3).map(np.array),
    st.floats(allow_nan=True, width=32).map(lambda x: np.array(x, dtype=np.float32)),
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(
        lambda shape: np.zeros(shape, dtype=np.float64)),
    st.lists(st.integers(0, 3), min_size=0, max_size=3).map(
        lambda shape: np.full(shape, "induction")),
    st.text(max_size=4).map(np.array))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          deadline=None)
@given(data=st.data())
def test_fuzzed_caches_are_measured_again_or_read(tiny, measured, tmp_path_factory, data):
    """Random keys dropped, replaced, mutated or added: cached_measurements answers the
    Measurements (fitting the run) or None with one line, never another exception."""
    arrays = dict(measured)
    for key in data.draw(st.lists(st.sampled_from(sorted(arrays)), max_size=4, unique=True)):
        action = data.draw(st.sampled_from(["drop", "replace", "reshape", "retype"]))
        if action == "drop":
            del arrays[key]
        elif action == "replace":
            arrays[key] = data.draw(_ARRAYS)
        elif action == "reshape":
            arrays[key] = arrays[key].reshape(-1)[:max(0, arrays[key].size - 1)]
        else:
            kind = data.draw(st.sampled_from(["U8", "bool", "int8", "float16"]))
            with np.errstate(all="ignore"), contextlib.suppress(ValueError):   # text -> int8
                arrays[key] = arrays[key].astype(kind)
    arrays.update(data.draw(st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1,
                                                    max_size=6), _ARRAYS, max_size=2)))
    path = tmp_path_factory.mktemp("fuzz") / "measurements.npz"
    save_npz(path, arrays)
    lines = []
    cached = measure.cached_measurements(tiny, path, lines.append)
    if cached is None:
        assert len(lines) == 1 and "\n" not in lines[0] and str(path) in lines[0]
    else:
        assert measure.cache_misfit(cached, tiny) is None and not lines


# ---- 9: make_notebooks' --out ------------------------------------------------------------

def test_make_notebooks_out_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert make_notebooks.main(["--out", str(tmp_path / "file"),
                                "--solutions-out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "--out", "is not a folder")
    assert make_notebooks.main(["--out", str(tmp_path / "file" / "below"),
                                "--solutions-out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "--out", "cannot write there")


def test_make_notebooks_out_read_only(tmp_path, capsys, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(make_notebooks.os, "access", lambda p, mode: False if pathlib.Path(p) ==
                        tmp_path / "ro" else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    assert make_notebooks.main(["--out", str(tmp_path / "ro"), "--solutions-out",
                                str(tmp_path / "s")]) == 2
    one_line_error(capsys, "--out", "not a writable folder")
    assert not (tmp_path / "s").exists()                        # nothing written


def test_make_notebooks_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(make_notebooks, "atomic_write_text", full)
    assert make_notebooks.main(["--out", str(tmp_path / "n"), "--solutions-out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, str(tmp_path / "n" / "ex01_"), ".ipynb", "No space left on device")


# ---- 18: the data line and the control ---------------------------------------------------

def test_a_synthetic_corpus_is_not_called_natural_text():
    run = SimpleNamespace(corpus={"name": "synthetic:repeated", "sha256": "0" * 64},
                          train_config={"synthetic_fraction": 0.0, "repeat_fraction": 0.0})
    line = phase_change.data_line(run)
    assert "natural" not in line and "SYNTHETIC: random segments" in line


@pytest.mark.parametrize("control, message", [("tiny", "is the run itself"),
                                              ("tiny2", "a 2-layer run")])
def test_the_control_must_be_another_one_layer_run(tiny, tmp_path, capsys, control, message):
    other = tiny.dir if control == "tiny" else tiny.dir.parent / "tiny2"
    if control == "tiny2" and not other.exists():
        import shutil
        shutil.copytree(tiny.dir, other)
    assert phase_change.main([str(tiny.dir), "--control", str(other), "--png",
                              str(tmp_path / "p.png")]) == 2
    one_line_error(capsys, "--control", message)
    assert not (tmp_path / "p.png").exists()


def test_a_one_layer_control_is_accepted(tiny, one_layer):
    assert phase_change.control_run(tiny, one_layer) is one_layer


# ---- 19, 20: heads --plot without --validate; phase_change on a full disk ----------------

def test_heads_plot_without_validate_is_refused(tiny, tmp_path, capsys):
    assert heads.main([str(tiny.dir), "--plot", str(tmp_path / "h.png")]) == 2
    one_line_error(capsys, "--plot", "--validate")


def test_phase_change_on_a_full_disk_names_the_figure(tiny, tmp_path, capsys, monkeypatch):
    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(phase_change, "atomic_write", full)
    png = tiny.dir / "phase_change.png"                # the default: no --png to fall back on
    assert phase_change.main([str(tiny.dir), "--points", "2"]) == 2
    err = one_line_error(capsys, str(png), "No space left on device")
    assert "None" not in err


# ---- 8, 20: the sweep stops its workers with it; a full disk names the run -----------------

SWEEP = """
import sys
from experiments import sweep
job = sweep.Job("m", "tiny", ("total_tokens=1e9", "snapshots=2", "n_eval=8"))
sweep.jobs_for = lambda args: [job]
sys.exit(sweep.main(["--root", sys.argv[1], "--workers", "1", "--train-only"]))
"""


def _workers(pid):
    """The sweep's pool workers: its children started by multiprocessing.spawn."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            cmdline = pathlib.Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def _alive(pid):
    try:
        state = [line for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
                 if line.startswith("State:")][0]
    except (OSError, IndexError):
        return False
    return "Z" not in state.split()[1]                # a zombie nobody reaps is gone too


def _sweep_with_a_working_job(tmp_path):
    import subprocess
    import sys
    import time
    process = subprocess.Popen([sys.executable, "-c", SWEEP, str(tmp_path / "root")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=pathlib.Path(__file__).parent.parent)
    deadline = time.time() + 60
    while time.time() < deadline:
        workers = _workers(process.pid) if process.poll() is None else []
        if workers and (tmp_path / "root" / "m" / "run.npz").exists():   # training has begun
            return process, workers
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"the sweep's worker never started: {process.communicate()}")


@pytest.fixture
def sweeping(tmp_path):
    """-> (the sweep's process, its workers) with a job training; all killed after the test."""
    process, workers = _sweep_with_a_working_job(tmp_path)
    yield process, workers
    for pid in [process.pid] + workers:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    process.communicate()


@pytest.mark.skipif(not pathlib.Path("/proc/self/task").exists(), reason="reads /proc")
def test_ctrl_c_stops_the_sweep_and_its_workers_with_one_line(sweeping):
    import signal
    import time
    process, workers = sweeping
    start = time.time()
    process.send_signal(signal.SIGINT)                 # the sweep alone, not its group
    process.wait(15)
    assert process.returncode == 130 and time.time() - start < 15
    err = process.stderr.read()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: ")
    time.sleep(0.5)
    assert not any(_alive(w) for w in workers)


@pytest.mark.skipif(not pathlib.Path("/proc/self/task").exists(), reason="reads /proc")
def test_a_killed_sweep_takes_its_workers_with_it(sweeping):
    import signal
    import time
    process, workers = sweeping
    process.send_signal(signal.SIGKILL)
    process.wait(15)
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)


def test_a_sweep_job_on_a_full_disk_names_its_run(tmp_path, monkeypatch):
    from experiments import sweep

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(sweep, "train", full)
    job = sweep.Job("m", "tiny", ("total_tokens=1e4",))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'm'}: No space left on device$"):
        sweep.run_job(job, tmp_path, measure=False, progress=False)
