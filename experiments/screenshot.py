"""Check that an HTML report opens offline in a browser, and take a screenshot of it.

    python -m experiments.screenshot report/index.html [--out report/screenshot.png]

check_images: each relative <img src> is an existing PNG, no src/href starts with http(s)://
or "/" (it opens from file://, no server). screenshot: headless Chromium (apt-get install
chromium, or CHROMIUM=/path) renders it to a PNG, which must not be blank. Errors: exit 2.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from minitransformer.io import error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def find_chromium():
    """Path of $CHROMIUM, else of a chromium/chrome binary on PATH; None if there is none."""
    env = os.environ.get("CHROMIUM")
    names = [env] if env else ["chromium", "chromium-browser", "google-chrome", "chrome"]
    return next(filter(None, map(shutil.which, names)), None)


def screenshot(html_path, png_path, width=1400, height=2400, timeout=120):
    """Render html_path headless from file:// into png_path (written atomically); its Path."""
    html, png = Path(html_path).resolve(), Path(png_path).resolve()
    if not html.is_file():
        raise ValueError(f"{html_path}: no such file")
    browser = find_chromium()
    if browser is None:
        name = os.environ.get("CHROMIUM") or "chromium"
        raise ValueError(f"{name}: not found; install it (apt-get install chromium) "
                         "or set CHROMIUM=/path")
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.stem}.{os.getpid()}.tmp.png")  # same folder: atomic replace
    try:
        with tempfile.TemporaryDirectory() as profile:  # fresh profile, no network at start
            proc = subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", f"--screenshot={tmp}",
                 "--allow-file-access-from-files", html.as_uri()],
                capture_output=True, text=True, errors="replace", timeout=timeout)
        if proc.returncode != 0 or not tmp.is_file() or tmp.read_bytes()[:8] != PNG_SIGNATURE:
            last = (proc.stderr.strip().splitlines() or ["no PNG written"])[-1]
            raise ValueError(f"{browser}: failed (exit {proc.returncode}): {last}")
        os.replace(tmp, png)
        return png
    except subprocess.TimeoutExpired:
        raise ValueError(f"{browser}: no screenshot after {timeout}s") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_images(html_path):
    """Problems (strings) that would stop the page opening offline; [] when it is fine."""
    html = Path(html_path)
    if not html.is_file():
        raise ValueError(f"{html_path}: no such file")
    links = []  # (tag, attribute, url)
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: links.extend(
        (tag, k, v) for k, v in attrs if k in ("src", "href") and v)
    parser.feed(html.read_text(encoding="utf-8"))
    problems = []
    for tag, attr, url in links:
        if url.startswith(("http://", "https://", "/")):
            problems.append(f"<{tag} {attr}={url!r}>: needs a server or network; "
                            "use a relative path")
        elif tag == "img" and attr == "src" and not urlsplit(url).scheme:  # data: URIs pass
            file = html.parent / unquote(urlsplit(url).path)
            if not file.is_file():
                problems.append(f"<img src={url!r}>: {file} does not exist")
            elif file.read_bytes()[:8] != PNG_SIGNATURE:
                problems.append(f"<img src={url!r}>: {file} is not a PNG")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html")
    p.add_argument("--out", help="PNG to write (default: screenshot.png beside the HTML)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=2400)
    args = p.parse_args(argv)
    try:
        problems = check_images(args.html)
        for problem in problems:
            print(f"{args.html}: {problem}", file=sys.stderr)
        if problems:
            return 2
        png = screenshot(args.html, args.out or Path(args.html).parent / "screenshot.png",
                         args.width, args.height)
        from matplotlib.image import imread
        rgb = imread(png)[..., :3]
        if (rgb == rgb[0, 0]).all():
            raise ValueError(f"{png}: blank screenshot (a single colour)")
    except ValueError as e:
        return error(e)
    print(f"{png}: {rgb.shape[1]}x{rgb.shape[0]} px, "
          f"{(rgb < 0.98).any(axis=-1).mean():.1%} non-white")
    return 0


if __name__ == "__main__":
    sys.exit(main())
