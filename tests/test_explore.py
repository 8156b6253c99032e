"""The explorer page (experiments.explore): the passage it picks, its data against the run (the
model's own patterns, the cached measurements), its size bound, its command line, and, in a
real headless Chromium from file:// (skipped with the reason where Chromium, chromedriver or
selenium is missing), that the slider, the arrow keys and play show each snapshot's numbers,
the cursor follows, hovering a token shows each head's pattern and nothing is requested from
the network. One tiny 2-layer run on the stdlib text (seconds)."""
import base64
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from circuits.scores import classify_heads
from experiments import explore, measure, report, sweep
from experiments.screenshot import check_images
from experiments.timeseries import icl_curve
from minitransformer.data import BOS
from minitransformer.runs import Run
from minitransformer.tokenizer import BYTES

from browser import requested_urls, skip_reason, start_chromium  # noqa: E402

# natural text, so the passage is a repeated identifier; n_ctx 128 so it can be 96 tokens
JOB = sweep.Job("attn-only-2l", "tiny", ("total_tokens=3e4", "snapshots=6", "n_eval=12", "n_ctx=128",
                                         "corpus=stdlib"), "attn-only")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny run, its measurements and its explorer page (written by the command line)."""
    root = tmp_path_factory.mktemp("explore")
    sweep.run_job(JOB, root, progress=False)
    run = Run(root / JOB.name)
    out = root / "page.html"
    result = subprocess.run([sys.executable, "-m", "experiments.explore", str(run.dir), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    return SimpleNamespace(root=root, run=run, m=measure.measure_run(run), page=out, text=text, stdout=result.stdout,
                           data=json.loads(re.search(r"id=explorer-data>(.*?)</script>", text, re.S)[1]))


def patterns(run, step, tokens):
    """Every head's pattern (L,H,T,T) of snapshot `step` on `tokens`, from run_with_cache."""
    _, cache = run.model(step).run_with_cache(np.asarray(tokens)[None])
    return np.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(run.config.n_layers)])


def page_patterns(data, k):
    """Snapshot k's patterns as the page holds them, (L*H, T, T) with zeros above the diagonal."""
    T = len(data["ids"])
    raw = np.frombuffer(base64.urlsafe_b64decode(data["snapshots"][k]["att"]), np.uint8)
    out = np.zeros((len(data["heads"]), T, T))
    rows, keys = np.tril_indices(T)
    out[:, rows, keys] = raw.reshape(len(data["heads"]), -1) / 255
    return out


# ---- the passage ------------------------------------------------------------------------------

def byte_rows(*texts, n=120):
    """Each text as one eval row of bytes, padded with distinct non-repeating tokens."""
    rows = [list(t.encode()) for t in texts]
    return np.array([r + list(range(130, 130 + n - len(r))) for r in rows])


def test_the_passage_is_the_longest_repeated_identifier_not_whitespace():
    rows = byte_rows("        a = 1\n        b = 2\n        c = 3\n",                # whitespace only
                     "    count = 0\n    for item in items:\n        count += item\n"
                     "    total_value = count\n    return total_value\n")
    p = explore.find_passage(rows, BYTES, 96)
    start, end = map(int, re.fullmatch(r"eval sequence 1, tokens (\d+)-(\d+)", p.source).groups())
    assert (p.kind, p.word, len(p.tokens), end - start + 1) == ("identifier", "total_value", 96, 96)
    assert p.tokens.tolist() == rows[1, start:end + 1].tolist()
    first, second = (bytes(p.tokens[i:i + p.length].astype(np.uint8)) for i in (p.first, p.second))
    assert first == second and b"total_value" in second and p.second >= p.first + p.length
    assert bytes([p.tokens[p.query]]) == b"o"                      # the word's 2nd token, 2nd copy
    short = explore.find_passage(rows, BYTES, 40)                  # 'total_value' no longer fits
    assert short.kind == "identifier" and short.word in ("count", "item", "items") and len(short.tokens) <= 40


def test_a_repeat_never_spans_two_documents_and_bos_first_leads_with_bos():
    rows = byte_rows("alphabet_soup_x = 1" + chr(BOS) + "x = alphabet_soup_x", "q = gamma_delta + gamma_delta")
    p = explore.find_passage(rows, BYTES, 64)
    assert p.word == "gamma_delta" and BOS not in p.tokens.tolist()
    with_bos = explore.find_passage(rows, BYTES, 64, bos_first=True)
    assert with_bos.tokens[0] == BOS and with_bos.tokens[1:].tolist() == p.tokens.tolist()[-63:]
    assert (with_bos.first, with_bos.second, with_bos.word) == (p.first + 1, p.second + 1, p.word)


def test_without_an_identifier_any_repeat_then_a_planted_one():
    p = explore.find_passage(byte_rows("!=#$%+!=#$%+"), BYTES, 64)
    assert (p.kind, p.first, p.second, p.length) == ("repeat", 0, 6, 6)
    none = np.arange(1, 65)[None]                                  # nothing repeats
    p = explore.find_passage(none, BYTES, 33)
    assert p.kind == "planted" and p.tokens.tolist() == [BOS] + list(range(2, 18)) * 2


def test_bpe_repeats_need_two_tokens():
    words = ["<bos>", " total", "_value", " =", " 1", "\n", " print", "(", ")", " x", " y"]
    fake = SimpleNamespace(hf_json="{}", decode=lambda ids: "".join(words[int(i)] for i in ids if int(i)))
    assert explore.min_repeat(fake) == 2
    rows = np.array([[9, 6, 1, 2, 3, 4, 5, 10, 6, 1, 2, 7, 8, 5]])   # ' total_value' twice
    p = explore.find_passage(rows, fake, 64)
    assert (p.kind, p.word, p.first, p.second, p.length) == ("identifier", "total_value", 1, 8, 3)
    assert fake.decode([rows[0, p.query]]) == "_value"


def test_the_passage_budget_keeps_200_snapshots_under_5_mb():
    for heads in (2, 4, 8, 12, 24):
        t = explore.passage_budget(heads, 256)
        size = lambda n: explore.FIXED_BYTES + 200 * explore.snapshot_bytes(heads, n)  # noqa: E731
        assert size(t) <= 5e6 and (t == explore.MAX_PASSAGE or size(t + 1) > 5e6), heads
    assert explore.passage_budget(8, 256) == 66 and explore.passage_budget(2, 32) == 32


# ---- the page's data against the run ----------------------------------------------------------

def test_every_snapshots_patterns_scores_and_classes_are_the_runs(built):
    run, m, data = built.run, built.m, built.data
    L, H = run.config.n_layers, run.config.n_heads
    assert [s["step"] for s in data["snapshots"]] == m.steps.tolist()
    assert data["repeat"]["kind"] == "identifier" and len(data["ids"]) <= explore.MAX_PASSAGE
    for k, s in enumerate(data["snapshots"]):
        p = patterns(run, s["step"], data["ids"]).reshape(L * H, len(data["ids"]), -1)
        assert np.abs(page_patterns(data, k) - np.tril(p)).max() <= 0.5 / 255 + 1e-6
        assert s["tokens"] == m.tokens[k] and s["pm"] == m.prefix_matching[k].ravel().tolist()
        assert s["cp"] == m.copying[k].ravel().tolist() and s["pt"] == m.previous_token[k].ravel().tolist()
        classes = classify_heads(m.prefix_matching[k], m.copying[k], m.previous_token[k]).ravel()
        assert [data["classes"][c] for c in s["cls"]] == classes.tolist()
    assert [data["classes"][c] for c in data["snapshots"][-1]["cls"]] == m.classes.ravel().tolist()


def test_the_page_states_its_size_and_200_snapshots_stay_under_5_mb(built):
    size = built.page.stat().st_size
    assert f"this page: {size / 1e3:,.0f} KB for {len(built.m.steps)} snapshots" in built.text
    assert "round(255&middot;w)" in built.text
    per = max(len(json.dumps(s, separators=(",", ":"))) for s in built.data["snapshots"])
    fixed = size - sum(len(json.dumps(s, separators=(",", ":"))) for s in built.data["snapshots"])
    assert per <= explore.snapshot_bytes(len(built.data["heads"]), len(built.data["ids"]))
    assert fixed <= explore.FIXED_BYTES and fixed + 200 * per <= 5e6


def test_the_command_prints_progress_and_fails_in_one_line(built, tmp_path):
    assert re.findall(r"snapshot (\d+)/6", built.stdout) == [str(i) for i in range(1, 7)]
    assert list(built.page.parent.glob(".*.tmp")) == []            # written atomically
    for args in ([str(tmp_path / "no-run")], [str(built.run.dir), "--out", str(tmp_path / "no" / "x.html")],
                 [str(built.run.dir), "--out", str(tmp_path / "x.png")]):
        result = subprocess.run([sys.executable, "-m", "experiments.explore", *args],
                                capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("error: ") and not (tmp_path / "x.png").exists()


def test_the_report_links_a_page_for_each_model_with_two_layers_or_more(built, tmp_path):
    one = sweep.Job("attn-only-1l", "tiny", JOB.overrides + ("n_layers=1",), "attn-only")
    sweep.run_job(one, built.root, progress=False)
    index, _, _ = report.build(built.root, [one, JOB], tmp_path / "report", log=None)
    page = index.read_text()
    assert re.findall(r"<a href='(explore/[^']*)'", page) == ["explore/attn-only-2l.html"]
    assert check_images(index) == []
    text = (tmp_path / "report" / "explore" / "attn-only-2l.html").read_text(encoding="utf-8")
    assert text == built.text                       # the page the command line makes
    assert not (tmp_path / "report" / "explore" / "attn-only-1l.html").exists()


# ---- in a real browser ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def opened(driver, built):
    driver.get(built.page.resolve().as_uri())
    return driver


def text_of(driver, css):
    return driver.execute_script("return document.querySelector(arguments[0]).textContent", css)


def cursor_x(driver, chart):
    return float(driver.execute_script(
        "return document.querySelector(arguments[0] + ' .cursor').getAttribute('x1')", "#" + chart))


def shown_heads(driver):
    """{head: (class, prefix matching as printed)} of the head panels."""
    rows = driver.execute_script("""return [...document.querySelectorAll('.head')].map(p =>
        [p.dataset.head, p.querySelector('.cls').textContent, p.querySelector('.pm').textContent])""")
    return {head: (cls, pm) for head, cls, pm in rows}


def assert_shows_snapshot(driver, built, k):
    m = built.m
    assert int(driver.execute_script("return document.getElementById('slider').value")) == k
    assert text_of(driver, "#position") == f"snapshot {k + 1} of {len(m.steps)}"
    assert text_of(driver, "#step") == str(built.run.snapshot_steps[k])
    assert text_of(driver, "#tokens") == f"{built.run.snapshot_tokens[k]:,}"
    classes = classify_heads(m.prefix_matching[k], m.copying[k], m.previous_token[k])
    L, H = classes.shape
    assert shown_heads(driver) == {f"{l}.{h}": (classes[l, h], f"{m.prefix_matching[k, l, h]:.3f}")
                                   for l in range(L) for h in range(H)}
    assert text_of(driver, "#icl") == f"{icl_curve(m.ctx_loss)[k]:.3f}"
    assert text_of(driver, "#loss") == f"{m.ctx_loss[k].mean():.3f}"


def test_the_slider_shows_each_snapshots_numbers_and_moves_the_cursor(opened, built):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    S = len(built.m.steps)
    xs = []
    for k in range(S):                                   # as a drag does: set the value, 'input'
        opened.execute_script("const s = document.getElementById('slider'); s.value = arguments[0];"
                              "s.dispatchEvent(new Event('input'))", k)
        assert_shows_snapshot(opened, built, k)
        xs.append([cursor_x(opened, c) for c in ("chart-prefix", "chart-icl", "chart-loss")])
    xs = np.array(xs)
    assert (np.diff(xs[:, 0]) > 0).all() and np.allclose(xs, xs[:, :1])   # one cursor, moving right
    ratio = (xs[:, 0] - xs[0, 0]) / (xs[-1, 0] - xs[0, 0])
    tokens = built.m.tokens.astype(float)
    assert np.allclose(ratio, (tokens - tokens[0]) / (tokens[-1] - tokens[0]), atol=1e-6)
    slider = opened.find_element(By.ID, "slider")       # the slider's own keys
    slider.send_keys(Keys.HOME, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert_shows_snapshot(opened, built, 2)


def test_arrow_keys_move_by_one_snapshot(opened, built):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    assert_shows_snapshot(opened, built, 0)
    x0 = cursor_x(opened, "chart-icl")
    opened.find_element("tag name", "h1").click()        # focus on the page, not a control
    ActionChains(opened).send_keys(Keys.ARROW_RIGHT).perform()
    assert_shows_snapshot(opened, built, 1)
    assert cursor_x(opened, "chart-icl") > x0
    ActionChains(opened).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_LEFT).perform()
    assert_shows_snapshot(opened, built, 2)
    ActionChains(opened).send_keys(Keys.END).perform()
    assert_shows_snapshot(opened, built, len(built.m.steps) - 1)
    ActionChains(opened).send_keys(Keys.ARROW_RIGHT).perform()       # stays at the last
    assert_shows_snapshot(opened, built, len(built.m.steps) - 1)
    ActionChains(opened).send_keys(Keys.HOME).perform()
    assert_shows_snapshot(opened, built, 0)


def test_play_runs_to_the_last_snapshot_and_stops(opened, built):
    from selenium.webdriver.support.ui import WebDriverWait
    opened.find_element("id", "play").click()
    assert text_of(opened, "#play").endswith("pause")
    last = len(built.m.steps) - 1
    WebDriverWait(opened, 10).until(lambda d: text_of(d, "#play").endswith("play"))
    assert_shows_snapshot(opened, built, last)


def test_hovering_a_token_shows_where_each_head_looks(opened, built):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    k = len(built.m.steps) - 1
    opened.execute_script("const s = document.getElementById('slider'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'))", k)
    ids = built.data["ids"]
    p = patterns(built.run, built.data["snapshots"][k]["step"], ids)
    tokens = opened.find_elements(By.CSS_SELECTOR, "#passage span")
    assert [t.get_attribute("textContent") for t in tokens] == [BYTES.label(t) for t in ids]
    for q in (built.data["query"], 0, len(ids) - 1, 17):
        ActionChains(opened).move_to_element(tokens[q]).perform()
        assert text_of(opened, "#query").endswith(f"@{q}")
        shown = opened.execute_script("""return [...document.querySelectorAll('.head')].map(p =>
            [p.dataset.head, [...p.querySelectorAll('.keys span')].map(s => s.dataset.weight)])""")
        for head, weights in shown:
            l, h = map(int, head.split("."))
            w = np.array([float(x) for x in weights[:q + 1]])
            assert np.abs(w - p[l, h, q, :q + 1]).max() <= 0.5 / 255 + 5e-4 + 1e-6, (head, q)
            assert all(x == "" for x in weights[q + 1:])


def test_the_page_requests_nothing_from_the_network(driver, built):
    driver.get_log("browser"), requested_urls(driver)            # what earlier tests left
    driver.get(built.page.resolve().as_uri())
    driver.find_element("id", "play").click()
    assert not re.search(r"https?:", built.text)                 # no address in the page at all
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    requested = requested_urls(driver)
    assert requested and all(u.startswith(("file://", "data:")) for u in requested), requested
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
