"""The documentation keeps its promises: README.md and every page under docs/ link only files
that are in the repository; every `python -m MODULE` they show (in a sh/bash/console block, or
as inline code) answers `--help`; every `make TARGET` they show is a target of the Makefile;
every `python path/to/script.py` names a file that is there. The README stays a front door:
at most 260 lines, with a link to every page under docs/.

Each module's --help runs once (they run side by side, ~1-3 s each), so the whole file takes
a few seconds; nothing is trained and make is never run."""
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 260
SHELL_LANGUAGES = {"sh", "bash", "console", "shell", "shell-session"}
HELP_TIMEOUT_S = 60
# An exercise file runs its exercise whatever its arguments (it trains or plots), so for it
# --help would not be a check: it only has to exist.
RUNS_ITS_DEMO = re.compile(r"^exercises(\.solutions)?\.ex\d\d_\w+$")


def pages():
    """README.md and every Markdown page under docs/."""
    return [README] + sorted((ROOT / "docs").glob("*.md"))


# ---- reading a Markdown page ------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")


def split_fences(text):
    """-> (prose: the text outside fenced code blocks, blocks: [(language, code), ...])."""
    prose, blocks, block, fence = [], [], None, None
    for line in text.splitlines():
        m = FENCE.match(line)
        if block is None and m:
            fence, language, block = m.group(1), m.group(2).lower(), []
        elif block is not None and line.strip().startswith(fence[0] * len(fence)) \
                and not line.strip().strip(fence[0]):
            blocks.append((language, "\n".join(block)))
            block = None
        elif block is not None:
            block.append(line)
        else:
            prose.append(line)
    if block is not None:                                   # an unclosed fence runs to the end
        blocks.append((language, "\n".join(block)))
    return "\n".join(prose), blocks


INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)


def inline_code(prose):
    """The inline code spans of prose, whitespace (line breaks included) made single spaces."""
    return [" ".join(m.group(2).split()) for m in INLINE_CODE.finditer(prose)]


MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)


def links(text):
    """Every link target of a page: [text](target), ![alt](target), [ref]: target, and the
    src/href of <img>, <a>, <source>; not what inline code or a code block shows."""
    prose, _ = split_fences(text)
    prose = INLINE_CODE.sub("", prose)
    return [m.group(1) for pattern in (MARKDOWN_LINK, REFERENCE_LINK, HTML_LINK)
            for m in pattern.finditer(prose)]


def local_target(target):
    """A link target -> the path part of a link into the repository, or None for a web
    address, a mail address or an anchor on the same page."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "//")):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    return path or None


def commands(text):
    """The commands a page shows: every line of its sh/bash/console blocks (a `$ ` prompt and
    a trailing comment dropped), and every inline code span that starts with `python` or
    `make`."""
    prose, blocks = split_fences(text)
    shown = []
    for language, code in blocks:
        if language in SHELL_LANGUAGES:
            for line in code.splitlines():
                line = re.sub(r"^\s*[$>]\s+", "", line)
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                if line:
                    shown.append(line)
    shown += [code for code in inline_code(prose) if re.match(r"(python3?|make|env)\s", code)]
    return shown


def python_modules(command):
    """`python -m MODULE` anywhere in a command line -> [MODULE, ...]."""
    return re.findall(r"(?:^|[\s;&|(])python3?\s+-m\s+([A-Za-z_][\w.]*)", command)


def python_scripts(command):
    """`python some/script.py` -> ["some/script.py", ...]."""
    return re.findall(r"(?:^|[\s;&|(])python3?\s+([\w./-]+\.py)\b", command)


def make_targets(command):
    """The targets of every `make ...` in a command line (variables KEY=VALUE and options
    left out)."""
    targets = []
    for part in re.split(r"&&|\|\||[;|]", command):
        try:
            words = shlex.split(part)
        except ValueError:                                  # an unclosed quote in prose
            words = part.split()
        if words and words[0] == "make":
            for word in words[1:]:
                if word.startswith((">", "<", "2>")):
                    break
                if "=" not in word and not word.startswith("-"):
                    targets.append(word)
    return targets


def makefile_targets(makefile=ROOT / "Makefile"):
    """The names of every rule in the Makefile (a line `name [name ...]:`, not `:=`), special
    targets such as .PHONY left out."""
    targets = set()
    for line in makefile.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.%/-][^:=#\t]*?)\s*::?(?!=)", line)
        if m:
            targets.update(name for name in m.group(1).split() if not name.startswith("."))
    return targets


# ---- what a page gets wrong -------------------------------------------------------------------

def ignored_by_git(path):
    """True if git ignores path (a run, a report: not in a fresh clone); False where it does
    not, or where this is not a git checkout."""
    try:
        result = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT,
                                capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def broken_links(page, root=ROOT):
    """-> ["target: why", ...] for every link of page to a file that is not in the
    repository (missing, outside it, or ignored by git)."""
    problems = []
    for target in links(page.read_text()):
        path = local_target(target)
        if path is None:
            continue
        resolved = (root / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
        resolved = resolved.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file ({resolved.relative_to(root.resolve())})")
        elif root == ROOT and ignored_by_git(resolved):
            problems.append(f"{target}: ignored by git, so not in a fresh clone")
    return problems


def unknown_make_targets(page, known):
    return [f"make {t}" for command in commands(page.read_text())
            for t in make_targets(command) if t not in known]


def missing_scripts(page, root=ROOT):
    return [f"python {s}" for command in commands(page.read_text())
            for s in python_scripts(command) if not (root / s).is_file()]


def shown_modules():
    """{module: [the pages that show it], ...} over every page."""
    shown = {}
    for page in pages():
        for command in commands(page.read_text()):
            for module in python_modules(command):
                shown.setdefault(module, [])
                if page.name not in shown[module]:
                    shown[module].append(page.name)
    return shown


def ours(module):
    """True for a module of this repository (its top-level name is a folder here)."""
    return (ROOT / module.split(".")[0]).is_dir()


def module_exists(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def help_result(module):
    """-> None if `python -m module --help` exits 0 within the timeout, else why not."""
    if RUNS_ITS_DEMO.match(module):
        return None if module_exists(module) else "no such module"
    try:
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"--help did not finish within {HELP_TIMEOUT_S} s"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return f"--help exited {result.returncode}: " + " | ".join(tail)
    return None


# ---- the tests --------------------------------------------------------------------------------

PAGE_IDS = [str(p.relative_to(ROOT)) for p in pages()]


@pytest.mark.parametrize("page", pages(), ids=PAGE_IDS)
def test_every_link_is_a_file_in_the_repository(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links files that are not here"


@pytest.mark.parametrize("page", pages(), ids=PAGE_IDS)
def test_every_make_target_shown_is_in_the_makefile(page):
    assert unknown_make_targets(page, makefile_targets()) == [], \
        f"{page.relative_to(ROOT)} shows make targets the Makefile does not have"


@pytest.mark.parametrize("page", pages(), ids=PAGE_IDS)
def test_every_python_script_shown_is_there(page):
    assert missing_scripts(page) == [], f"{page.relative_to(ROOT)} shows scripts that are not here"


@pytest.fixture(scope="module")
def help_results():
    """{module: None or what went wrong} for every module a page shows, each run once, side
    by side. Another project's module (pip, pytest) is checked only where it is installed."""
    modules = [m for m in shown_modules() if ours(m) or module_exists(m.split(".")[0])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(modules, pool.map(help_result, modules)))


def test_the_pages_show_commands_at_all():
    """The checks below have something to check: the parser finds the README's two commands
    and the CLIs the pages document."""
    assert {"train-2l", "test"} <= {t for c in commands(README.read_text()) for t in make_targets(c)}
    assert {"minitransformer.train", "circuits.heads", "circuits.eigen",
            "circuits.patching"} <= set(shown_modules())


def test_every_python_module_shown_answers_help(help_results):
    shown = shown_modules()
    failed = {m: f"{why} (shown in {', '.join(shown[m])})"
              for m, why in help_results.items() if why is not None}
    assert failed == {}


def test_readme_is_a_front_door_that_links_every_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, \
        f"README.md has {len(lines)} lines; the rest belongs in docs/ (at most {README_MAX_LINES})"
    linked = {(README.parent / local_target(t)).resolve() for t in links(README.read_text())
              if local_target(t)}
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert unlinked == [], "README.md does not link these pages of docs/"


# ---- the checks catch what they are for -------------------------------------------------------

def test_the_checks_catch_a_broken_page(tmp_path):
    """A page that links a missing file, shows a module and a make target that do not exist
    and a missing script is caught on each count; the same page fixed passes."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# there\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# A page\n\nSee [this](docs/there.md#a-section), [that](docs/missing.md),\n"
        "![a figure](docs/figures/none.png), <img src=\"gone.png\"> and [the web](https://x.org).\n"
        "Inline code is not a link: `[x](nowhere.md)`.\n\n"
        "```sh\n$ make no-such-target N=4   # a comment\npython -m no_such_package.cli --flag\n"
        "python benchmarks/no_such_bench.py\n```\n\n"
        "Run `python -m circuits.heads RUN\n--json` or `make train-2l`.\n")
    assert broken_links(page, root=tmp_path) == [
        "docs/missing.md: no such file (docs/missing.md)",
        "docs/figures/none.png: no such file (docs/figures/none.png)",
        "gone.png: no such file (gone.png)"]
    assert unknown_make_targets(page, makefile_targets()) == ["make no-such-target"]
    assert missing_scripts(page, root=tmp_path) == ["python benchmarks/no_such_bench.py"]
    shown = [m for c in commands(page.read_text()) for m in python_modules(c)]
    assert shown == ["no_such_package.cli", "circuits.heads"]
    assert help_result("no_such_package.cli") is not None
    assert help_result("circuits.nonexistent_tool") is not None
    assert help_result("exercises.ex99_nothing") == "no such module"
