"""One measurement layer (circuits.scores): `python -m circuits.heads --json`, `python -m
circuits.eigen --json`, the report's cached measurements (experiments.measure) and `make
train-2l`'s summary (experiments.phase_change) give the same numbers for the same snapshot,
on the sample the measurements of version 1 were made with."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from circuits import (HeadScores, classify_heads, copying_score, copying_scores, induction_model,
                      prefix_matching_score, prev_token_qk_trace, previous_token_score)
from circuits.scores import HEAD_SAMPLE, sample_counts
from experiments import measure, phase_change
from minitransformer.presets import preset
from minitransformer.train import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEASURED = {"prefix_matching": "prefix_matching_score", "copying": "copying_score",
            "previous_token": "previous_token_score", "prev_token_qk_trace": "prev_token_qk_trace",
            "prev_token_qk_trace_normalised": "prev_token_qk_trace_normalised"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return train(tmp_path_factory.mktemp("runs") / "tiny", *preset("tiny"), progress=False)


def cli_rows(tool, run):
    """`python -m circuits.<tool> RUN --all-steps --json` -> {(step, layer, head): row}."""
    done = subprocess.run([sys.executable, "-m", f"circuits.{tool}", str(run.dir), "--all-steps",
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {(r["step"], r["layer"], r["head"]): r for r in json.loads(done.stdout)}


def as_number(x):
    return np.nan if x is None else x


def test_the_two_clis_and_the_cached_measurements_agree(tiny):
    heads, eigen = cli_rows("heads", tiny), cli_rows("eigen", tiny)
    m = measure.measure_run(tiny)
    S, L, H = m.prefix_matching.shape
    assert len(heads) == len(eigen) == S * L * H
    for s, step in enumerate(m.steps):
        for l in range(L):
            for h in range(H):
                key = (int(step), l, h)
                for member, field in MEASURED.items():      # bit for bit (JSON keeps float64)
                    cached = getattr(m, member)[s, l, h]
                    assert np.array_equal(cached, as_number(eigen[key][field]), equal_nan=True), (key, field)
                    if field in heads[key]:                     # the evaluators
                        assert np.array_equal(cached, as_number(heads[key][field]), equal_nan=True)
                assert heads[key]["class"] == eigen[key]["class"]
    last = int(m.steps[-1])
    assert [[heads[(last, l, h)]["class"] for h in range(H)] for l in range(L)] == m.classes.tolist()


def test_make_train_2l_summary_reads_the_same_scores(tiny):
    m = measure.measure_run(tiny)
    a = phase_change.analyse(tiny, points=4)
    assert np.array_equal(a.prefix_matching, m.prefix_matching) and np.array_equal(a.classes, m.classes)


def test_the_sample_is_the_one_measurements_since_version_1_used(tiny):
    """measure.VERSION 1 was computed with the evaluators' defaults, the run's token counts
    and the first 16 eval sequences (version 2 added the paper's copying score and ablated
    snapshots, on the same sample); HeadScores must give those numbers to the bit."""
    assert measure.VERSION == 2 and HEAD_SAMPLE.n_previous == 16
    step = int(tiny.snapshot_steps[2])
    model, scores = tiny.model(step), HeadScores.of_run(tiny, step)
    previous = previous_token_score(model, tiny.eval_tokens[:16])
    trace, normalised = prev_token_qk_trace(model, previous)
    for ours, v1 in ((scores.prefix_matching, prefix_matching_score(model, token_counts=tiny.token_counts)),
                     (scores.copying, copying_score(model, token_counts=tiny.token_counts)),
                     (scores.copying_paper, copying_scores(model, token_counts=tiny.token_counts)[1]),
                     (scores.previous_token, previous), (scores.prev_token_qk_trace, trace),
                     (scores.prev_token_qk_trace_normalised, normalised)):
        assert np.array_equal(ours, v1, equal_nan=True)


def test_scores_are_computed_when_read_and_kept_read_only():
    model = induction_model(d_vocab=32, n_ctx=64)
    scores = HeadScores(model, np.random.default_rng(0).integers(0, 32, (20, 64)))
    assert len(scores.text) == HEAD_SAMPLE.n_previous
    assert scores.classes.tolist() == [["previous-token"], ["induction"]]
    assert "ov_copying" not in vars(scores)                   # not needed for the classes
    assert scores.k_composition_partner.tolist() == [[""], ["0.0"]]
    assert np.isnan(scores.k_composition[0, 0]) and scores.k_composition[1, 0] > scores.k_composition_baseline
    with pytest.raises(ValueError):
        scores.prefix_matching[0, 0] = 1.0
    assert np.array_equal(scores.classes, classify_heads(scores.prefix_matching, scores.copying,
                                                         scores.previous_token))


def test_random_tokens_come_from_the_corpus_when_it_has_enough():
    cfg = induction_model(d_vocab=32, n_ctx=64).config
    counts = np.ones(32, dtype=np.int64)                    # 31 seen, 25 left after the drops
    assert sample_counts(cfg, counts) is counts
    few = counts.copy()
    few[20:] = 0                                            # 19 seen, 15 left: too few for 25
    assert sample_counts(cfg, few) is None and sample_counts(cfg, None) is None
