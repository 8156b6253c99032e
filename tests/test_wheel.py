"""An installable package: the wheel built from this tree, installed alone into a fresh virtual
environment outside the checkout, runs the commands of the README on its own.

The tree (git's tracked and untracked, not ignored, files) is copied to a temporary folder, so
no build/ or egg-info is written into the checkout, and nothing stale there can leak into the
wheel. An sdist is built from the copy and the wheel from the unpacked sdist, what
`python -m build` does, through setuptools' PEP 517 hooks with no network (setuptools >= 70.1,
which the dev extra installs, has bdist_wheel built in). The venv is made without system
site-packages, so this checkout's editable install is invisible to it; the wheel and its
dependencies (numpy, matplotlib, safetensors, threadpoolctl and theirs, nothing else) come from
pip's configured index. Then, from a folder outside the checkout with PYTHONPATH unset, the
venv's python runs `python -m minitransformer.train --preset tiny` (synthetic tokens: no corpus
file), `python -m circuits.eigen` on the run (with --plot: matplotlib), the exporter and the
explorer, after checking that every module it imports comes from the venv's site-packages.

~25 s on 2 busy cores, half of it pip installing NumPy and matplotlib."""
import email.parser
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("minitransformer", "circuits", "experiments")
# `pip install .` with no extras: NumPy and matplotlib, and what the commands import besides
# (threadpoolctl: minitransformer.cpu sets BLAS threads in train, eigen and explore;
# safetensors: the exporter). tokenizers is the bpe extra, imported only for BPE tokens.
BASE = {"numpy", "matplotlib", "safetensors", "threadpoolctl"}
NOT_IN_THE_BASE = ("tokenizers", "huggingface_hub", "torch", "pytest", "hypothesis", "dask")
MAX_WHEEL_BYTES = 10_000_000    # a run added as package data by mistake would pass this
SKIPPED_DIRS = {".git", "build", "dist", "runs", "__pycache__", ".hypothesis", ".pytest_cache",
                "_output", ".venv", ".whl", "notebooks"}
INSTALL_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 180


def run(args, cwd, env=None, timeout=COMMAND_TIMEOUT_S):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, args))} (in {cwd}) exited "
                                    f"{result.returncode}:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


def source_files():
    """The tree's files relative to ROOT: git's tracked and untracked-not-ignored files (as an
    sdist would see the working tree), or without git every file outside build outputs."""
    if shutil.which("git") and (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=ROOT, capture_output=True)
        if listed.returncode == 0:
            names = [n for n in listed.stdout.decode().split("\0") if n]
            return [n for n in names if (ROOT / n).is_file()]   # not files deleted in the tree
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
            and not SKIPPED_DIRS & set(p.relative_to(ROOT).parts[:-1])
            and not any(part.endswith(".egg-info") or part.startswith("report")
                        for part in p.relative_to(ROOT).parts[:-1])]


def setuptools_builds_wheels():
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2]) >= (70, 1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """-> (the wheel's path, the copied tree): an sdist built from a copy of the tree, the
    wheel built from the unpacked sdist, as `python -m build` does."""
    if not setuptools_builds_wheels():
        pytest.skip("needs setuptools >= 70.1 to build a wheel offline (pip install -e .[dev])")
    base = tmp_path_factory.mktemp("wheel")
    tree = base / "tree"
    for name in source_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    hook = ("import sys, setuptools.build_meta as b; "
            "print(getattr(b, 'build_' + sys.argv[1])(sys.argv[2]))")
    sdist = run([sys.executable, "-c", hook, "sdist", base / "sdist"], tree).stdout.split()[-1]
    with tarfile.open(base / "sdist" / sdist) as tar:   # the "data" filter where Python has it
        tar.extractall(base / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter")
                                             else {}))
    unpacked = base / "unpacked" / sdist.removesuffix(".tar.gz")
    wheel = run([sys.executable, "-c", hook, "wheel", base / "dist"], unpacked).stdout.split()[-1]
    return base / "dist" / wheel, tree


def package_files(tree):
    """Every file of the three packages in the tree, .py or data, relative to the tree."""
    return {str(p.relative_to(tree).as_posix()) for package in PACKAGES
            for p in (tree / package).rglob("*") if p.is_file() and p.suffix != ".pyc"
            and "__pycache__" not in p.parts}


def metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def test_the_wheel_holds_the_three_packages_and_every_file_of_them(built):
    """minitransformer, circuits and experiments, each file of them (a template or a shipped
    run added later too: package-data in pyproject.toml), and nothing else: no tests,
    exercises or benchmarks."""
    wheel, tree = built
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if not n.endswith("/")}
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == set(PACKAGES), f"top-level folders in {wheel.name}: {sorted(tops)}"
    expected = package_files(tree)
    shipped = {n for n in names if ".dist-info/" not in n}
    assert expected - shipped == set(), (f"in the packages but not in the wheel (add a pattern to "
                                         f"[tool.setuptools.package-data]): {sorted(expected - shipped)}")
    assert shipped - expected == set(), f"in the wheel, not in the tree: {sorted(shipped - expected)}"
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, f"{wheel.name}: {wheel.stat().st_size:,} bytes"


def test_the_wheel_requires_numpy_matplotlib_and_what_the_commands_import(built):
    """Requires-Dist without extras is exactly BASE; tokenizers (BPE) is the bpe extra, and the
    lab extra (the students' install) is still there."""
    meta = metadata(built[0])
    requires = meta.get_all("Requires-Dist") or []
    base = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-")
            for r in requires if "extra ==" not in r}
    assert base == BASE, f"Requires-Dist without extras: {sorted(base)}, expected {sorted(BASE)}"
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"bpe", "lab", "dev"} <= extras, sorted(extras)
    assert any(r.startswith("tokenizers") and 'extra == "bpe"' in r for r in requires), requires


def venv_python(venv):
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip_has_python_option():
    """pip >= 22.3 installs into another environment with --python (the venv then needs no
    pip of its own: no ensurepip, seconds saved)."""
    from importlib.metadata import version
    return tuple(int(x) for x in re.findall(r"\d+", version("pip"))[:2]) >= (22, 3)


def test_the_commands_run_from_a_fresh_venv_with_the_wheel_alone(built, tmp_path):
    wheel, _ = built
    venv, work = tmp_path / "venv", tmp_path / "work"
    assert not venv.is_relative_to(ROOT) and not work.is_relative_to(ROOT)
    work.mkdir()
    if pip_has_python_option():
        run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
        pip = [sys.executable, "-m", "pip", "--python", venv_python(venv)]
    else:
        run([sys.executable, "-m", "venv", venv], tmp_path)
        pip = [venv_python(venv), "-m", "pip"]
    run(pip + ["install", "-q", "--no-compile", "--prefer-binary", wheel], tmp_path,
        timeout=INSTALL_TIMEOUT_S)

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", MPLBACKEND="Agg",
               MINITRANSFORMER_CACHE=str(tmp_path / "cache"))
    python = venv_python(venv)

    # every module the commands import comes from the venv, none from the checkout
    where = run([python, "-c", f"""
import importlib, importlib.util, json, sys, sysconfig
mods = {sorted(set(PACKAGES) | BASE)!r}
print(json.dumps({{"site": sysconfig.get_paths()["purelib"], "path": sys.path,
    "files": {{m: importlib.import_module(m).__file__ for m in mods}},
    "absent": [m for m in {NOT_IN_THE_BASE!r} if importlib.util.find_spec(m) is None]}}))
"""], work, env).stdout
    found = json.loads(where)
    site = pathlib.Path(found["site"]).resolve()
    assert site.is_relative_to(venv.resolve()), found["site"]
    for module, file in found["files"].items():
        assert pathlib.Path(file).resolve().is_relative_to(site), f"{module} from {file}, not {site}"
    assert not [p for p in found["path"] if p and pathlib.Path(p).resolve().is_relative_to(ROOT)]
    assert found["absent"] == list(NOT_IN_THE_BASE), (
        f"installed with the wheel, not asked for: {set(NOT_IN_THE_BASE) - set(found['absent'])}")

    train = run([python, "-m", "minitransformer.train", "--preset", "tiny", "--out", "run"],
                work, env)
    assert (work / "run" / "run.npz").is_file() and "6 snapshots" in train.stdout, train.stdout

    eigen = run([python, "-m", "circuits.eigen", "run", "--all-steps", "--plot", "eigen.png"],
                work, env)
    rows = [line for line in eigen.stdout.splitlines() if re.match(r"\s+\d+\s+[\d,]+\s+\d\.\d", line)]
    assert len(rows) == 6 * 4, eigen.stdout          # 6 snapshots x 2 layers x 2 heads
    assert (work / "eigen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    export = run([python, "-m", "minitransformer.export", "run", "--out", "run.safetensors"],
                 work, env)
    assert "TransformerLens" in export.stdout, export.stdout
    data = (work / "run.safetensors").read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    assert "config" in header["__metadata__"] and "embed.W_E" in header, sorted(header)
    same = run([python, "-c", """
import numpy as np, minitransformer
from minitransformer.export import load_transformer_lens
tokens = np.random.default_rng(0).integers(0, 256, (2, 32))
a, b = minitransformer.load("run").forward(tokens), load_transformer_lens("run.safetensors").forward(tokens)
print(float(np.abs(a - b).max()))
"""], work, env)
    assert float(same.stdout.split()[-1]) == 0.0, same.stdout   # the exported weights, exactly

    explore = run([python, "-m", "experiments.explore", "run"], work, env)
    page = work / "run" / "explorer.html"
    assert page.is_file() and "explorer:" in explore.stdout, explore.stdout
    text = page.read_text(encoding="utf-8")
    assert "<script" in text and "</html>" in text.lower()
