"""The analysis tools never replace a run with a figure, check where they write before
they compute, and answer a bad output path with one line (issue 12)."""
import numpy as np
import pytest

from circuits import eigen
from experiments import losses, phase_change, report
from minitransformer.presets import preset
from minitransformer.runs import Run, save_npz
from minitransformer.train import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools") / "tiny"
    train(out, *preset("tiny"), progress=False)
    return out


def one_line_error(capsys, fragment):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err, err
    return captured.out


@pytest.mark.parametrize("tool,flag", [(eigen.main, "--plot"), (phase_change.main, "--png")])
def test_a_figure_never_replaces_the_run(tiny, capsys, tool, flag):
    before = (tiny / "run.npz").read_bytes()
    assert tool([str(tiny), flag, str(tiny / "run.npz")]) == 2
    assert one_line_error(capsys, "expected a file name ending in .png") == ""   # nothing computed
    assert (tiny / "run.npz").read_bytes() == before


@pytest.mark.parametrize("tool,flag", [(eigen.main, "--plot"), (phase_change.main, "--png")])
def test_an_unwritable_figure_is_refused_before_the_table(tiny, tmp_path, capsys, tool, flag):
    (tmp_path / "file").write_text("x")
    assert tool([str(tiny), flag, str(tmp_path / "file" / "out.png")]) == 2
    assert one_line_error(capsys, "cannot write there") == ""


def test_phase_change_needs_two_points(tiny, capsys):
    assert phase_change.main([str(tiny), "--points", "0"]) == 2
    one_line_error(capsys, "--points 0: must be at least 2")


def test_a_losses_cache_without_its_key_is_computed_again(tiny):
    run = Run(tiny)
    save_npz(losses.cache_file(run, 0), {"step": np.array(0)})
    fresh = losses.snapshot_losses(run, 0)
    assert fresh.shape == (len(run.eval_tokens), run.config.n_ctx - 1)
    assert np.array_equal(losses.snapshot_losses(run, 0), fresh)        # and cached again


def test_report_out_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "root").mkdir()
    assert report.main(["--root", str(tmp_path / "root"), "--out", str(tmp_path / "file" / "r")]) == 2
    one_line_error(capsys, "cannot write")
