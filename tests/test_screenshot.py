"""experiments.screenshot: the offline check of an HTML page's links, and headless Chromium's
screenshot of it from file:// (skipped where no Chromium is installed)."""
import numpy as np
import pytest
from matplotlib.image import imread, imsave

from experiments.screenshot import check_images, find_chromium, main, screenshot

RED = (1.0, 0.0, 0.0)
needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="needs headless Chromium")


def page(folder, body):
    """folder/figures/square.png (a 200x200 red square) and folder/index.html with `body`."""
    (folder / "figures").mkdir()
    imsave(folder / "figures" / "square.png", np.broadcast_to(RED, (200, 200, 3)).copy())
    html = folder / "index.html"
    html.write_text(f"<!doctype html><html><body>{body}</body></html>", encoding="utf-8")
    return html


def test_check_images_reports_missing_and_online(tmp_path):
    html = page(tmp_path, '<img src="figures/square.png"> <img src="figures/missing.png">'
                          ' <a href="http://example.com/x">x</a> <a href="#top">top</a>')
    problems = check_images(html)
    assert len(problems) == 2, problems
    assert "figures/missing.png" in problems[0] and "does not exist" in problems[0]
    assert "http://example.com/x" in problems[1]


def test_check_images_rejects_non_png_and_absolute_paths(tmp_path):
    html = page(tmp_path, '<img src="index.html"> <img src="/figures/square.png">')
    problems = check_images(html)
    assert len(problems) == 2 and "not a PNG" in problems[0] and "server" in problems[1]


def test_missing_browser_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-browser"))
    assert find_chromium() is None
    with pytest.raises(ValueError, match="no-such-browser: not found; install it"):
        screenshot(page(tmp_path, "<h1>x</h1>"), tmp_path / "shot.png")


@needs_chromium
def test_screenshot_loads_the_image_from_file(tmp_path):
    html = page(tmp_path, '<h1>Report</h1><img src="figures/square.png">')
    png = screenshot(html, tmp_path / "shot.png", width=500, height=400)
    assert png == tmp_path / "shot.png" and png.read_bytes()[:4] == b"\x89PNG"
    rgb = imread(png)[..., :3]
    assert rgb.shape[1] == 500
    red = np.all(np.abs(rgb - RED) < 0.05, axis=-1)
    assert red.sum() > 0.5 * 200 * 200  # the square is there: the image loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "index.html", "shot.png"]


@needs_chromium
def test_cli_prints_size_and_non_white_fraction(tmp_path, capsys):
    html = page(tmp_path, '<h1>Report</h1><img src="figures/square.png">')
    assert main([str(html), "--width", "400", "--height", "300"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(tmp_path / "screenshot.png")) and "400x300 px" in out
    assert "non-white" in out


@pytest.mark.parametrize("argv", [["missing.html"], ["missing.html", "--out", "x.png"]])
def test_cli_missing_file_is_one_line(tmp_path, capsys, argv):
    argv[0] = str(tmp_path / argv[0])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: ") and "missing.html: no such file" in err


def test_cli_problems_exit_2(tmp_path, capsys):
    html = page(tmp_path, '<script src="https://cdn.example.com/x.js"></script>')
    assert main([str(html)]) == 2
    assert "https://cdn.example.com/x.js" in capsys.readouterr().err
    assert not (tmp_path / "screenshot.png").exists()
