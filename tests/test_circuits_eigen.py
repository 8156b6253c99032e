"""python -m circuits.eigen on a run whose snapshots are the hand-built induction model:
step 0 with a uniform layer-0 head, steps 10 and 20 with the previous-token head."""
import csv
import io
import json

import numpy as np
import pytest

from circuits.eigen import FIELDS, main

from handmade_run import STEPS, write_handmade_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    eval_tokens = np.random.default_rng(0).integers(0, 32, (8, 64))
    return write_handmade_run(tmp_path_factory.mktemp("runs") / "handmade", eval_tokens)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_marks_the_previous_token_and_the_induction_head(run_dir, capsys):
    code, out, err = run_cli(capsys, run_dir)
    assert code == 0 and err == ""
    rows = {line.split()[2]: line for line in out.splitlines()[2:]}
    assert set(rows) == {"0.0", "1.0"}
    assert rows["0.0"].rstrip().endswith("previous-token")
    assert rows["1.0"].rstrip().endswith("induction")
    assert "0.0 " in rows["1.0"]                                    # its K-composition partner


def test_json_has_one_object_per_head_with_the_named_fields(run_dir, capsys):
    code, out, _ = run_cli(capsys, run_dir / "run.npz", "--step", 10, "--json")
    rows = json.loads(out)
    assert code == 0 and [(r["layer"], r["head"]) for r in rows] == [(0, 0), (1, 0)]
    assert all(list(r) == FIELDS for r in rows)
    first, second = rows
    assert first["step"] == 10 and first["tokens"] == 5120
    assert first["prev_token_qk_trace"] is None and first["k_composition_partner"] is None
    assert first["previous_token_score"] > 0.99
    assert second["ov_copying_score"] == pytest.approx(1.0)
    assert second["prev_token_qk_trace_normalised"] == pytest.approx(np.sqrt(32), rel=1e-4)
    assert second["k_composition_partner"] == "0.0"
    assert second["k_composition_score"] > 2 * second["k_composition_baseline"]
    assert second["prefix_matching_score"] > 0.99


def test_all_steps_csv_is_the_time_series(run_dir, capsys):
    code, out, _ = run_cli(capsys, run_dir, "--all-steps", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == len(STEPS) * 2
    induction = [float(r["prev_token_qk_trace"]) for r in rows if r["layer"] == "1"]
    assert [int(r["step"]) for r in rows if r["layer"] == "1"] == list(STEPS)
    assert induction[0] < 0.1 * induction[1] and induction[1] == pytest.approx(induction[2])
    assert [r["class"] for r in rows if r["layer"] == "0"] == ["other", "previous-token", "previous-token"]
    # at step 0 nothing below is a previous-token head: no prefix matching, no induction head,
    # whatever the normalised trace says (one earlier head: its weight cancels in trace / ||W||_F)
    assert [r["class"] for r in rows if r["layer"] == "1"] == ["other", "induction", "induction"]


def test_plot_is_written(run_dir, tmp_path, capsys):
    target = tmp_path / "trace.png"
    code, _, _ = run_cli(capsys, run_dir, "--all-steps", "--plot", target)
    assert code == 0 and target.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("make_path, argv, message", [
    (lambda d, t: t / "missing.npz", (), "no such file"),
    (lambda d, t: d / "snapshots" / "step_0000000.npz", (), "missing key 'format_version'"),
    (lambda d, t: (t / "notes.txt").write_text("hello") and t / "notes.txt", (), "not a run"),
    (lambda d, t: d, ("--step", 7), "no snapshot at step 7"),
])
def test_errors_are_one_line(run_dir, tmp_path, capsys, make_path, argv, message):
    code, out, err = run_cli(capsys, make_path(run_dir, tmp_path), *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
