"""The natural-text model the exercises study (exercises.common.natural_run, made by
`python -m exercises.common` / `make natural-model`): its settings are the README's
attn-only-2l recipe, and the cache works: made once, reused, resumed when a run of it was
killed, waited for (never read half-written) by a second process. Every run here is the real
preset and corpus with a budget of a few steps (NATURAL_OVERRIDES patched): seconds, not the
3-4 minutes of the real one."""
import functools
import os
import pathlib
import subprocess
import sys
import time

import pytest

from exercises import common
from minitransformer.data import corpus_from_spec
from minitransformer.presets import preset
from minitransformer.runs import Run, run_file
from minitransformer.train import snapshot_schedule

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(total_tokens=4096, snapshots=3, n_eval=8)     # 4 steps of 4 x 256; snapshots 0, 2, 4

# a second process: the real natural_run on the tiny budget in OUT; KILL (a tests/kill_at.py
# spec) kills it there; HOLD: once it holds the lock and starts training, it touches that
# file and waits 3 s, so that a process started then finds the lock held
CHILD = """
import os, pathlib, sys, time
sys.path[:0] = [os.environ["ROOT"], os.path.join(os.environ["ROOT"], "tests")]
from exercises import common
import minitransformer.train as train_module
common.OUTPUT = pathlib.Path(os.environ["OUT"])
common.NATURAL_OVERRIDES = dict(common.NATURAL_OVERRIDES, **eval(os.environ["TINY"]))
if os.environ.get("KILL"):
    import kill_at
    kill_at.install(os.environ["KILL"])
if os.environ.get("HOLD"):
    real = train_module._train
    def held(*args, **kwargs):
        pathlib.Path(os.environ["HOLD"]).touch()
        time.sleep(3)
        return real(*args, **kwargs)
    train_module._train = held
run = common.natural_run()
print(f"RESULT step={run.step} tokens={run.tokens}", flush=True)
"""


def child(out, **env):
    """Start CHILD on `out` -> the Popen (stdout and stderr together, text)."""
    env = {**os.environ, "ROOT": str(ROOT), "OUT": str(out), "TINY": repr(TINY),
           "OPENBLAS_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@functools.lru_cache(maxsize=None)
def read_corpus(spec):
    return corpus_from_spec(spec)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """natural_run on the tiny budget, its cache in tmp_path -> the run directory. The corpus
    is read once for all these tests (1-2 s each time)."""
    import minitransformer.train as train_module
    monkeypatch.setattr(common, "OUTPUT", tmp_path)
    monkeypatch.setattr(common, "NATURAL_OVERRIDES", dict(common.NATURAL_OVERRIDES, **TINY))
    monkeypatch.setattr(train_module, "corpus_from_spec", read_corpus)
    return tmp_path / "runs" / common.NATURAL_NAME


@pytest.fixture
def trainings(monkeypatch):
    """The calls of minitransformer.train.train (what cached_run trains with) -> their kwargs."""
    import minitransformer.train as train_module
    calls, real = [], train_module.train

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(train_module, "train", counting)
    return calls


def test_the_real_settings_are_the_readmes_recipe_stopped_at_8M():
    model, train = common.natural_settings()
    preset_model, preset_train = preset("attn-only-2l")
    assert common.NATURAL_PRESET == "attn-only-2l"
    assert model == preset_model                  # the model of make train-2l's figure
    assert {k: v for k, v in train.items() if k not in ("total_tokens", "snapshots")} == \
        {k: v for k, v in preset_train.items() if k not in ("total_tokens", "snapshots")}
    assert train["total_tokens"] == 8_000_000 <= preset_train["total_tokens"]
    # a constant lr after warmup and the same seed: the first 8M tokens of that 10M-token run
    assert train.get("schedule", "constant") == "constant" and train.get("seed", 0) == 0
    # a snapshot every 0.5M tokens from 0 to 8M (the phase change is at ~3-5M)
    steps = snapshot_schedule(-(-train["total_tokens"] // (train["batch_size"] * model["n_ctx"])),
                              train["snapshots"])
    tokens = [s * train["batch_size"] * model["n_ctx"] / 1e6 for s in steps]
    assert len(tokens) == 17
    assert tokens == pytest.approx([0.5 * i for i in range(17)], abs=0.001)


def test_made_once_then_reused(tiny, trainings, capsys):
    assert common.natural_run(make=False) is None and not trainings   # not made: no training
    run = common.natural_run()
    assert len(trainings) == 1 and "training natural-2l once" in capsys.readouterr().out
    assert run.dir == tiny and run.step == 4 and list(run.snapshot_steps) == [0, 2, 4]
    written = run_file(tiny).stat().st_mtime_ns
    again = common.natural_run(make=False), common.natural_run()
    assert len(trainings) == 1 and "training" not in capsys.readouterr().out
    assert all(r.step == 4 for r in again) and run_file(tiny).stat().st_mtime_ns == written


def test_a_run_of_other_settings_is_trained_again(tiny, trainings, monkeypatch):
    common.natural_run()
    monkeypatch.setattr(common, "NATURAL_OVERRIDES",
                        dict(common.NATURAL_OVERRIDES, total_tokens=6144))
    run = common.natural_run()
    assert [c["force"] for c in trainings] == [True, True] and run.step == 6


def test_a_killed_run_is_resumed_not_returned(tiny, trainings):
    """Killed after its 2nd run.npz (step 2 of 4): the old check (run.npz exists) returned it
    half-trained; natural_run(make=False) says it is not there, natural_run() finishes it."""
    killed = child(tiny.parent.parent, KILL="run.npz#2:after-rename")
    output, _ = killed.communicate(timeout=120)
    assert killed.returncode != 0, output
    assert Run(tiny).step == 2
    assert common.natural_run(make=False) is None
    run = common.natural_run()
    assert [c["resume"] for c in trainings] == [True] and run.step == 4


def test_a_second_process_waits_for_the_first(tmp_path):
    """The first holds the lock while it trains; the second, started then, waits and gets the
    finished run, trained once."""
    hold = tmp_path / "training"
    first = child(tmp_path, HOLD=str(hold))
    deadline = time.time() + 60
    while not hold.exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = child(tmp_path)
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert "training natural-2l once" in outputs[0] and "RESULT step=4" in outputs[0]
    assert "waiting for it" in outputs[1] and "training" not in outputs[1], outputs[1]
    assert "RESULT step=4 tokens=4096" in outputs[1]


def test_the_command_reports_what_it_made(tiny, capsys):
    """python -m exercises.common's main on the tiny budget: made, described; 4 steps form no
    induction head, which it says (exit 1) rather than passing over."""
    assert common.main() == 1
    out = capsys.readouterr().out
    assert f"{tiny}: 4,096 training tokens of python-stdlib" in out
    assert "3 snapshots at 0.0M, 0.0M, 0.0M" in out
    assert "no induction head at the end" in out


def test_make_natural_model_runs_the_command():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\nnatural-model:"):].split("\n\n")[0]
    assert "-m exercises.common" in target


def test_the_synthetic_model_is_cached_the_same_way(monkeypatch):
    """trained_run (the tiny-induction model) goes through the same locked, finished check."""
    calls = []
    monkeypatch.setattr(common, "cached_run", lambda *args, **kwargs: calls.append(args))
    common.trained_run(n_layers=1, smeared_key=True)
    (name, model, train), = calls
    assert name == "tiny-induction-1l-smeared" and model["n_layers"] == 1 and model["smeared_key"]
    assert train == preset("tiny-induction")[1]
