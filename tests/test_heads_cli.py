"""python -m circuits.heads on a run whose snapshots are the hand-built induction model (step
0 with a uniform layer-0 head, steps 10 and 20 with the previous-token head) and on a tiny
trained run: the table, JSON, ablation column, validation and the one-line errors."""
import json
import math

import numpy as np
import pytest

from circuits.ablation import ablation_losses, icl_change
from circuits.evaluators import repeated_random_tokens
from circuits.heads import FIELDS, main, pearson, ranks, spearman
from minitransformer.presets import preset
from minitransformer.runs import Run
from minitransformer.train import train

from handmade_run import write_handmade_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    eval_tokens = repeated_random_tokens(8, 21, 3, d_vocab=32, seed=3)      # BOS + 21 x 3 = 64
    return write_handmade_run(tmp_path_factory.mktemp("runs") / "handmade", eval_tokens)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("runs") / "tiny", *preset("tiny"), progress=False)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_classes_the_heads(run_dir, capsys):
    code, out, err = run_cli(capsys, run_dir, "--all-steps")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("#") and lines[1].split()[:6] == ["step", "tokens", "head", "prefix",
                                                                  "copying", "prev_tok"]
    rows = {(line.split()[0], line.split()[2]): line.split()[-1] for line in lines[2:]}
    assert rows == {("0", "0.0"): "other", ("0", "1.0"): "other",
                    ("10", "0.0"): "previous-token", ("10", "1.0"): "induction",
                    ("20", "0.0"): "previous-token", ("20", "1.0"): "induction"}


def test_json_rows_and_the_ablation_column(run_dir, capsys):
    code, out, _ = run_cli(capsys, run_dir / "run.npz", "--step", 10, "--json", "--ablate")
    rows = json.loads(out)
    assert code == 0 and [(r["layer"], r["head"]) for r in rows] == [(0, 0), (1, 0)]
    assert all(list(r) == FIELDS + ["icl_change"] for r in rows)
    first, second = rows
    assert first["step"] == 10 and first["tokens"] == 5120
    assert first["copying_score"] is None                 # writes nothing the unembedding reads
    assert first["previous_token_score"] > 0.99 and second["prefix_matching_score"] > 0.99
    assert second["copying_score"] > 0.99 and second["class"] == "induction"
    run = Run(run_dir)
    expected = icl_change(ablation_losses(run.model(10), run.eval_tokens))
    assert [r["icl_change"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-6)
    assert abs(first["icl_change"]) < 1e-6 and second["icl_change"] > 1.0   # the induction head holds the ICL


def test_table_with_ablation(run_dir, capsys):
    code, out, _ = run_cli(capsys, run_dir, "--ablate", "--n-eval", 4)
    lines = out.splitlines()
    assert code == 0 and "clean ICL score" in lines[1] and "icl_change" in lines[2]
    assert lines[4].split()[-2].startswith("+") and float(lines[4].split()[-2]) > 1.0


def test_validate_prints_both_correlations_and_writes_the_plot(tiny_run, tmp_path, capsys):
    plot = tmp_path / "validate.png"
    code, out, err = run_cli(capsys, tiny_run.dir, "--validate", "--plot", plot)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "copying_score vs ov_copying_score" in lines[1]
    assert "prefix_matching_score vs prev_token_qk_trace " in lines[2]
    snapshots, heads = len(tiny_run.snapshot_steps), 4
    assert f"(n={snapshots * heads})" in lines[1] and f"(n={snapshots * heads // 2})" in lines[2]
    assert all("Pearson" in line and "Spearman" in line for line in lines[1:4])
    assert plot.stat().st_size > 1000
    code, out, _ = run_cli(capsys, tiny_run.dir, "--validate", "--json", "--plot", plot)
    stats = json.loads(out)["correlations"]
    assert [s["analytic"] for s in stats] == ["ov_copying_score", "prev_token_qk_trace",
                                              "prev_token_qk_trace_normalised"]
    assert all(-1 <= s["pearson"] <= 1 and -1 <= s["spearman"] <= 1 for s in stats)


def test_validate_on_the_hand_built_run(run_dir, tmp_path, capsys):
    code, out, _ = run_cli(capsys, run_dir, "--validate", "--json", "--plot", tmp_path / "v.png")
    copying, trace, _ = json.loads(out)["correlations"]
    assert code == 0 and copying["n"] == 3                 # head 0.0's copying score is undefined
    assert trace["n"] == 3 and trace["pearson"] > 0.99     # both rise with the previous-token head


def test_correlations():
    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0) and pearson(x, np.exp(x)) < 1
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, np.ones(4))) and math.isnan(spearman([1.0], [2.0]))


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "no such file"),
    (["{text}"], "not a run"),
    (["{run}", "--step", "7"], "no snapshot at step 7"),
    (["{run}", "--ablate", "--n-eval", "0"], "--n-eval"),
    (["{run}", "--validate", "--plot", "{text}/v.png"], "cannot write"),   # under a file
])
def test_one_line_errors(run_dir, tmp_path, capsys, argv, message):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    paths = dict(missing=tmp_path / "nothing", text=text, run=run_dir)
    code, out, err = run_cli(capsys, *[a.format(**paths) for a in argv])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
