"""The sweep (local pool and Dask LocalCluster), its restart rules, the measurements it caches
and the report built from them, on tiny models (seconds each)."""
import fcntl
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from circuits import ablation_losses, icl_change
from experiments import measure, report, seeds, sweep, timeseries
from experiments.screenshot import check_images
from minitransformer.npz import read_npz, save_npz
from minitransformer.runs import Run, run_file

import kill_at  # noqa: E402  (tests/kill_at.py)

TINY = ("total_tokens=3e4", "snapshots=4", "n_eval=12")
JOBS = [sweep.Job("attn-only-1l", "tiny", TINY + ("n_layers=1",), "attn-only"),
        sweep.Job("attn-only-2l", "tiny", TINY, "attn-only"),
        sweep.Job("smeared-1l", "tiny", TINY + ("n_layers=1", "smeared_key=true"), "smeared",
                  control="attn-only-1l")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return root, sweep.run_sweep(JOBS, root, workers=2, log=lambda line: None)


def test_local_pool_trains_and_measures_every_job(swept):
    root, lines = swept
    assert sorted(line.split(" in ")[0] for line in lines) == sorted(
        f"{root / j.name}: trained, measured" for j in JOBS)
    for job in JOBS:
        run = Run(root / job.name)
        assert run.tokens >= 30_000 and len(run.snapshot_steps) == 4
        assert measure.measurement_file(run).exists()


def test_a_second_sweep_keeps_finished_runs_and_cached_measurements(swept):
    root, _ = swept
    stamps = {j.name: (run_file(root / j.name).stat().st_mtime_ns,
                       (root / j.name / "measurements.npz").stat().st_mtime_ns) for j in JOBS}
    lines = sweep.run_sweep(JOBS, root, workers=1, log=lambda line: None)
    assert all("finished run kept, measured" in line for line in lines)
    for j in JOBS:
        assert stamps[j.name] == (run_file(root / j.name).stat().st_mtime_ns,
                                  (root / j.name / "measurements.npz").stat().st_mtime_ns)


def test_an_interrupted_job_resumes_to_the_same_model(tmp_path):
    job = sweep.Job("m", "tiny", ("total_tokens=6e4", "snapshots=8", "n_eval=8"))
    sweep.run_job(job, tmp_path / "straight", measure=False, progress=False)
    worker = multiprocessing.get_context("spawn").Process(   # it kills itself mid-write
        target=kill_at.run_killed, args=("run.npz#4:mid-write", sweep.run_job, job, str(tmp_path / "cut")),
        kwargs=dict(measure=False, progress=False))
    worker.start()
    worker.join(120)
    assert worker.exitcode == -signal.SIGKILL
    assert Run(tmp_path / "cut" / "m").tokens < 60_000                      # stopped part way
    assert "trained" in sweep.run_job(job, tmp_path / "cut", measure=False, progress=False)
    a, b = Run(tmp_path / "straight" / "m").params(), Run(tmp_path / "cut" / "m").params()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_second_process_waits_for_the_job_another_one_holds(tmp_path):
    job = sweep.Job("m", "tiny", ("total_tokens=2e4", "snapshots=2", "n_eval=8"))
    lines = []
    with open(tmp_path / ".m.lock", "w") as held:      # as another sweep's job would hold it
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: lines.append(
            sweep.run_job(job, tmp_path, measure=False, progress=False)))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and not run_file(tmp_path / "m").exists()
    worker.join(60)
    assert lines and "trained" in lines[0] and run_file(tmp_path / "m").exists()
    assert "finished run kept" in sweep.run_job(job, tmp_path, measure=False, progress=False)


def test_a_run_of_other_settings_is_never_overwritten(swept, tmp_path):
    root, _ = swept
    other = sweep.Job("attn-only-2l", "tiny", TINY + ("lr=1e-4",), "attn-only")
    with pytest.raises(RuntimeError, match="attn-only-2l.*other settings \\(lr \\(stored"):
        sweep.run_sweep([other], root, workers=1, log=lambda line: None)


def test_the_same_jobs_run_on_a_dask_local_cluster_seed_by_seed(tmp_path):
    distributed = pytest.importorskip("distributed")
    jobs = sweep.with_seeds(JOBS[1:2], 2)                          # attn-only-2l, seeds 0 and 1
    assert [j.folder for j in jobs] == ["attn-only-2l", "attn-only-2l-seed1"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        # the address, as --scheduler tcp://HOST:PORT gives it
        lines = sweep.run_sweep(jobs, tmp_path, scheduler=cluster.scheduler_address,
                                log=lambda line: None)
    assert len(lines) == 2 and all("trained, measured" in line for line in lines)
    runs = [Run(tmp_path / j.folder) for j in jobs]
    assert all(measure.measurement_file(run).exists() for run in runs)
    assert [run.train_config["seed"] for run in runs] == [0, 1]
    assert np.array_equal(runs[0].eval_tokens, runs[1].eval_tokens)          # one eval set
    assert not np.array_equal(runs[0].model().params["blocks.1.attn.W_Q"],
                              runs[1].model().params["blocks.1.attn.W_Q"])
    models, missing = report.load(tmp_path, jobs, log=None)
    assert missing == [] and [m.seed for m in seeds.by_model(models.values())["attn-only-2l"]] == [0, 1]


def test_a_dask_sweep_shows_progress_summaries_and_failures_at_the_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    good = JOBS[1]                                                             # attn-only-2l
    missing = tmp_path / "no-such-corpus.txt"                 # fails on the worker, not here
    bad = sweep.Job("broken-1l", "tiny", TINY + ("n_layers=1", f"corpus={missing}"), "attn-only")
    lines = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with pytest.raises(RuntimeError, match="^1 of 2 jobs failed: broken-1l: --corpus"):
            sweep.run_sweep([good, bad], tmp_path, scheduler=cluster.scheduler_address,
                            log=lines.append)
    # the worker's lines, named by their job: the run's header, its progress (tokens, tok/s,
    # ETA), its measurement steps; then the summary line a local sweep prints
    ours = [line for line in lines if line.startswith("attn-only-2l: ")]
    assert re.fullmatch(r"attn-only-2l: .* \d+ steps of 256 tokens, 4 snapshots", ours[0])
    progress = [line for line in ours if re.fullmatch(
        r"attn-only-2l: step +\d+/\d+ +[\d.]+M tokens +[\d,]+ tok/s +loss [\d.]+ +lr \S+ +ETA \S+", line)]
    assert progress and progress[-1].startswith("attn-only-2l: step    118/118")
    assert any(re.fullmatch(r"attn-only-2l: measured 4/4 snapshots, \d+ s", line) for line in ours)
    summary = [line for line in lines if line.startswith(f"{tmp_path / 'attn-only-2l'}: ")]
    assert len(summary) == 1 and summary[0].startswith(f"{tmp_path / 'attn-only-2l'}: trained, measured in ")
    assert lines.index(summary[0]) > lines.index(ours[-1])                # after its job's lines
    assert f"broken-1l: failed: --corpus {missing}: no such file or folder" in lines
    assert Run(tmp_path / "attn-only-2l").tokens >= 30_000
    assert not (tmp_path / "broken-1l" / "run.npz").exists()


def test_a_jobs_output_on_a_worker_goes_as_whole_lines_and_throttled_progress(monkeypatch):
    monkeypatch.setattr(sweep, "PROGRESS_EVERY", 3600.0)
    sent = []
    out = sweep._JobLines(sent.append, ("/runs/m: ", "m: "))
    for text in ("/runs/m: 10 steps\n", "\rstep 1/10\x1b[K", "\rstep 2/10\x1b[K", "\rstep 10/10\x1b[K",
                 "\n", "m: measured 4/4 snapshots, 0 s\n", "a warning", " in two writes\n"):
        out.write(text)
    assert sent == ["10 steps", "step 1/10", "step 10/10", "measured 4/4 snapshots, 0 s",
                    "a warning in two writes"]


def test_seeds_flag_names_every_seed_of_every_model():
    args = sweep.build_parser().parse_args(["--only", "attn-only-1l", "mlp-2l", "--seeds", "3"])
    assert [j.folder for j in sweep.jobs_for(args)] == [
        "attn-only-1l", "mlp-2l", "attn-only-1l-seed1", "mlp-2l-seed1", "attn-only-1l-seed2",
        "mlp-2l-seed2"]
    result = subprocess.run([sys.executable, "-m", "experiments.sweep", "--seeds", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--seeds" in result.stderr


def test_measurements_agree_with_direct_computation(swept):
    root, _ = swept
    run = Run(root / "attn-only-2l")
    m = measure.measure_run(run)
    n, t = run.eval_tokens.shape
    S, L, H = len(run.snapshot_steps), run.config.n_layers, run.config.n_heads
    assert m.ctx_loss.shape == (S, t - 1) and m.random_loss.shape == (S, n)
    assert m.prefix_matching.shape == m.prev_token_qk_trace.shape == (S, L, H) and np.isnan(m.prev_token_qk_trace[:, 0]).all()
    assert m.ablation_icl.shape[1] == L * H and m.ablation_random.shape[1:] == (L * H, n)
    from experiments.losses import per_token_losses
    last = per_token_losses(run.model(), run.eval_tokens)
    assert np.allclose(m.random_loss[-1], last[np.arange(n), m.random_index], atol=1e-5)
    groups = [g for _, g in measure.group_ablations(m.classes)]
    direct = icl_change(ablation_losses(run.model(), run.eval_tokens, groups))
    assert np.allclose(m.group_icl, direct, atol=1e-5)


def test_the_measurements_file_holds_its_version_2_members(swept):
    root, _ = swept
    run = Run(root / "attn-only-2l")
    path = measure.measurement_file(run)
    with np.load(path) as archive:
        assert sorted(archive.files) == sorted(
            ["prefix_matching", "copying", "copying_paper", "previous_token", "prev_token_qk_trace",
             "prev_token_qk_trace_normalised", "version", "steps", "tokens", "ctx_loss", "random_index", "random_loss",
             "ablation_steps", "ablation_icl", "ablation_random", "ablation_clean_icl", "classes",
             "group_names", "group_icl", "clean_icl_ablate", "n_layers", "n_heads"])
        assert int(archive["version"]) == measure.VERSION == 2
    m = measure.Measurements.read(path)
    assert m.n_layers == 2 and isinstance(m.clean_icl_ablate, float)
    with pytest.raises(ValueError):
        m.prefix_matching[0, 0, 0] = 1.0                            # a record nobody mutates


def test_a_cache_with_the_old_member_names_still_loads(swept, tmp_path):
    root, _ = swept
    path = measure.measurement_file(Run(root / "attn-only-2l"))
    new = measure.Measurements.read(path)
    old_name = {new_name: old_name for old_name, new_name in measure.OLD_MEMBERS.items()}
    old = {old_name.get(key, key): value for key, value in read_npz(path).items()}
    assert "prefix" in old and "prefix_matching" not in old
    save_npz(tmp_path / "old.npz", old)
    read = measure.Measurements.read(tmp_path / "old.npz")
    for name in measure.HEAD_SCORES:
        assert np.array_equal(getattr(read, name), getattr(new, name), equal_nan=True)


def test_measurements_are_recomputed_when_the_run_changes(swept):
    root, _ = swept
    run = Run(root / "attn-only-1l")
    path = measure.measurement_file(run)
    before = path.stat().st_mtime_ns
    measure.measure_run(run)
    assert path.stat().st_mtime_ns == before                        # fresh: kept
    later = time.time() + 5
    os.utime(run_file(run.dir), (later, later))                     # the run moved on
    measure.measure_run(Run(run.dir))
    assert path.stat().st_mtime_ns > before


def test_report_has_every_figure_and_opens_offline(swept, tmp_path):
    root, _ = swept
    index, lines, checks = report.build(root, JOBS, tmp_path / "report", log=lambda line: None)
    assert len(lines) == len(JOBS) and check_images(index) == []
    page = index.read_text()
    for name in ("attn-only_table.png", "attn-only_pca.png", "smeared_pairs.png", "smeared_table.png"):
        assert name in page and (tmp_path / "report" / "figures" / name).stat().st_size > 1000
    assert any(s.startswith("attn-only-1l: no phase change") and total == 1
               for s, _, _, total in checks)
    for heading in ("The paper's claims, seed by seed", "Argument 3, head by head",
                    "The ICL score at other index pairs", "greatest convex minorant"):
        assert heading in page
    views = re.findall(r"<details class='attn-view'[^>]*><summary>([^:]*):", page)
    assert views == ["attn-only-2l"]                 # the attention view: 2+ layer models only


def test_sweep_cli_names_a_bad_model_in_one_line():
    result = subprocess.run([sys.executable, "-m", "experiments.sweep", "--only", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nope" in result.stderr


def test_markdown_table_has_a_row_per_model_with_its_measured_numbers(swept):
    root, _ = swept
    models, missing = report.load(root, JOBS, log=None, measure=True)
    text = seeds.markdown_table(models.values())
    rows = text.splitlines()
    assert len(rows) == 2 + len(models) and missing == []
    for row, m in zip(rows[2:], models.values()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(seeds.HEADERS) and cells[:2] == [m.name, "0"]
        assert cells[4] == f"{m.icl[-1]:+.3f}"                      # one seed: the value alone
        assert cells[-1] == (", ".join(m.induction_heads) or "none")
        assert (cells[2] == "-") == (m.icl_window is None)
        bump = m.stats.bump                       # NaN in these short runs: too few snapshots
        size = "-" if np.isnan(bump.size) else f"{bump.size:.3f}"
        assert cells[-2].startswith(f"{size} (noise ") and f"above it on {int(bump.exceeds)}/1" in cells[-2]


def test_head_ablations_at_the_window_end_are_the_measured_ones(swept):
    root, _ = swept
    models, _ = report.load(root, JOBS, log=None, measure=True)
    for m in models.values():
        k = list(m.measurements.ablation_steps).index(m.measurements.steps[-1])
        clean = float(m.measurements.ablation_clean_icl[k])
        expected = (m.measurements.ablation_icl[k] / -clean if clean <= -timeseries.MIN_FALL
                    else np.full(len(m.measurements.ablation_icl[k]), np.nan))       # nothing to remove
        assert np.allclose(m.heads.share[1], expected, equal_nan=True)
        assert np.allclose(m.heads.projection[1], m.attribution[k])
        if m.icl_window is not None:                          # the window's edges were ablated too
            assert set(np.searchsorted(m.measurements.tokens, m.icl_window)) <= set(
                np.searchsorted(m.measurements.steps, m.measurements.ablation_steps))


def test_the_bpe_recipe_names_the_bpe_presets_into_its_own_folder():
    args = sweep.build_parser().parse_args(["--recipe", "bpe", "--only", "attn-only-2l", "smeared-2l",
                                            "template-2l"])
    jobs = sweep.jobs_for(args)
    assert [j.preset for j in jobs] == ["attn-only-2l-bpe", "smeared-2l-bpe", "attn-only-2l"]
    assert [j.configs()[1].get("tokenizer", "bytes") for j in jobs] == ["bpe:2048", "bpe:2048", "bytes"]
    assert str(sweep.default_root(False, "bpe")) == "runs/sweep-bpe"
    assert sweep.jobs_for(sweep.build_parser().parse_args([]))[0].preset == "attn-only-1l"


def test_the_layernorm_family_is_the_attention_only_recipe_with_layernorm():
    for recipe, suffix in (("bytes", ""), ("bpe", "-bpe")):
        jobs = [j for j in sweep.default_jobs(recipe) if j.family == "layernorm"]
        assert [j.name for j in jobs] == [f"attn-only-ln-{n}l" for n in sweep.LN_LAYERS]
        for job in jobs:
            model, train = job.configs()
            plain = sweep.Job("plain", job.preset.replace("-ln", ""), job.overrides).configs()
            assert model["normalization_type"] == "LN" and plain[0]["normalization_type"] is None
            assert {k: v for k, v in model.items() if k != "normalization_type"} == \
                {k: v for k, v in plain[0].items() if k != "normalization_type"}
            assert train == plain[1] and job.preset.endswith(suffix)
