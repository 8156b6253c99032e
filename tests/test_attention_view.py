"""The report's interactive attention view (experiments.attention_view): its data against the
model's own patterns and the cached head classes, and, in a real headless Chromium from
file:// (skipped with the reason where Chromium, chromedriver or selenium is missing), that
hovering or focusing a token shows every head's pattern, with no console error, no network
and no markup injected from the passage."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from circuits import HeadScores
from experiments import attention_view, measure, report, sweep, table
from experiments.screenshot import check_images
from minitransformer.data import BOS
from minitransformer.tokenizer import BYTES
from minitransformer.runs import Run

from browser import requested_urls, skip_reason, start_chromium  # noqa: E402

# n_ctx 128 so that the markup passage fits whole; the repeated passage stays 63 tokens
JOB = sweep.Job("attn-only-2l", "tiny", ("total_tokens=3e4", "snapshots=4", "n_eval=12", "n_ctx=128"),
                "attn-only")
MARKUP = ("</script><img src=x onerror=\"injected=1\"><script>injected=2</script> \"q\" 'q' "
          "&amp; <!-- \u00e9\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny trained and measured 2-layer run, its report, and a page of two views of it on
    the markup passage (the second closed)."""
    root = tmp_path_factory.mktemp("view")
    sweep.run_job(JOB, root, progress=False)
    index, _, _ = report.build(root, [JOB], root / "report", log=lambda line: None)
    run = Run(root / JOB.name)
    model = table.analyse(JOB.name, JOB.family, "", run, measure.measure_run(run))
    markup = root / "markup.html"
    markup.write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>{attention_view.CSS}"
                      f"</style></head><body>{attention_view.section([model, model], MARKUP)}</body></html>",
                      encoding="utf-8")
    return SimpleNamespace(index=index, run=run, model=model, markup=markup)


def patterns(run, step, tokens):
    """Every head's pattern (L,H,T,T) of snapshot `step` on `tokens`, from run_with_cache."""
    _, cache = run.model(step).run_with_cache(np.asarray(tokens)[None])
    return np.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(run.config.n_layers)])


# ---- the data, without a browser ----------------------------------------------------------

def test_tokens_are_shown_as_bytes_with_escapes():
    labels = [BYTES.label(t) for t in (BOS, 65, 32, 60, 34, 10, 9, 127, 0xE9)]
    assert labels == ["BOS", "A", " ", "<", '"', "\\n", "\\t", "\\x7f", "\\xe9"]


def test_the_passage_repeats_a_span_of_eval_text_without_bos():
    eval_tokens = np.array([[BOS, 5, BOS, 7, 8, 9, 10, 11], [BOS, 1, 2, 3, 4, 5, 6, 7]])
    assert attention_view.repeated_passage(eval_tokens, 64, span=3).tolist() == [BOS, 7, 8, 9, 7, 8, 9]
    assert attention_view.repeated_passage(eval_tokens, 64, span=6).tolist() == [BOS] + [1, 2, 3, 4, 5, 6] * 2
    assert attention_view.repeated_passage(eval_tokens, 8, span=6).tolist() == [BOS, 7, 8, 9, 7, 8, 9]
    with pytest.raises(ValueError, match="no 3 tokens in a row without BOS"):
        attention_view.repeated_passage(np.zeros((2, 8), int), 64, span=3)


def _analysis(n, window=None, before_after=(0, 0)):
    return SimpleNamespace(measurements=SimpleNamespace(steps=np.arange(n)), icl_window=window,
                           before_after_steps=before_after)


def test_snapshots_bracket_the_window_or_fall_back_and_say_so():
    chosen, note = attention_view.view_snapshots(_analysis(20, (1e5, 3e5), (4, 12)))
    assert chosen == [("before", 4), ("inside", 8), ("after", 12)] and "0.10M" in note and "0.30M" in note
    chosen, note = attention_view.view_snapshots(_analysis(20))
    assert chosen == [("first", 0), ("middle", 9), ("last", 19)] and "no phase-change window" in note
    chosen, note = attention_view.view_snapshots(_analysis(20, (1e5, 2e5), (4, 5)))
    assert chosen == [("before", 4), ("after", 5)] and "No snapshot lies strictly inside" in note


def test_view_data_holds_every_heads_rounded_pattern_and_its_class(built):
    run, model = built.run, built.model
    tokens = attention_view.repeated_passage(run.eval_tokens, run.config.n_ctx)
    data = attention_view.view_data(model, tokens)
    chosen, _ = attention_view.view_snapshots(model)
    assert len(tokens) == 63 and tokens[1:32].tolist() == tokens[32:].tolist()
    assert [s["step"] for s in data["snapshots"]] == [int(model.measurements.steps[i]) for _, i in chosen]
    for snapshot in data["snapshots"]:
        p = patterns(run, snapshot["step"], tokens)
        classes = HeadScores.of_run(run, snapshot["step"]).classes       # computed again
        for head in snapshot["heads"]:
            l, h = map(int, head["name"].split("."))
            assert [len(row) for row in head["rows"]] == list(range(1, len(tokens) + 1))
            for q, row in enumerate(head["rows"]):
                assert np.abs(np.array(row) / 1000 - p[l, h, q, :q + 1]).max() <= 5e-4 + 1e-6
            assert head["class"] == classes[l, h]
    last = data["snapshots"][-1]
    if last["step"] == model.measurements.steps[-1]:           # the cached classes of measurements.npz
        assert [h["class"] for h in last["heads"]] == model.measurements.classes.ravel().tolist()


def test_the_data_cannot_close_its_script_element():
    text = attention_view.script_json({"labels": ["</script>", "<!--", "&", "'\""]})
    assert not set("<>&") & set(text) and json.loads(text)["labels"][0] == "</script>"


def test_the_section_leaves_out_one_layer_models(built):
    one = SimpleNamespace(run=SimpleNamespace(config=SimpleNamespace(n_layers=1)))
    assert attention_view.section([one]) == ""
    page = built.markup.read_text(encoding="utf-8")
    assert page.count("<script") == 3 and "<img" not in page      # the markup only as escaped JSON
    data = json.loads(re.search(r"<script type='application/json' class='attn-data'>(.*?)</script>", page)[1])
    assert "".join(data["labels"][1:]).startswith("</script><img src=x onerror=")


# ---- in a real browser ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    driver = start_chromium()
    yield driver
    driver.quit()


def open_view(driver, path, n=0):
    from selenium.webdriver.common.by import By
    driver.get(path.resolve().as_uri())
    return driver.find_elements(By.CSS_SELECTOR, "details.attn-view")[n]


def query_tokens(view):
    from selenium.webdriver.common.by import By
    return view.find_elements(By.CSS_SELECTOR, ".attn-query span")


def shown(driver, view):
    """What each head's panel shows: {head: (class, [data-weight], [background alpha], top)}."""
    panels = driver.execute_script("""return [...arguments[0].querySelectorAll('.attn-panel')].map(p => [
        p.dataset.head, p.querySelector('.attn-name span').textContent, p.style.display,
        [...p.querySelectorAll('.attn-keys span')].map(s => [s.dataset.weight, getComputedStyle(s).backgroundColor]),
        p.querySelector('.attn-top').textContent])""", view)
    return {head: SimpleNamespace(cls=cls, visible=display != "none", weights=[w for w, _ in keys],
                                  alpha=[_alpha(c) for _, c in keys], top=top)
            for head, cls, display, keys, top in panels}


def _alpha(css_colour):
    numbers = re.findall(r"[\d.]+", css_colour)
    return float(numbers[3]) if len(numbers) == 4 else 1.0


def selected_step(view):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    return int(Select(view.find_element(By.CSS_SELECTOR, "select.attn-snapshot")).first_selected_option
               .get_attribute("data-step"))


def assert_shows_query(driver, view, run, q):
    """Every head's panel shows the pattern from query q of the selected snapshot."""
    tokens = [int(s.get_attribute("data-token")) for s in query_tokens(view)]
    p = patterns(run, selected_step(view), tokens)
    for head, panel in shown(driver, view).items():
        l, h = map(int, head.split("."))
        weights = np.array([float(w) for w in panel.weights[:q + 1]])
        assert np.abs(weights - p[l, h, q, :q + 1]).max() <= 5e-4 + 1e-6, (head, q)
        assert np.allclose(panel.alpha[:q + 1], weights, atol=1 / 255 + 1e-6), (head, q)
        assert all(w == "" for w in panel.weights[q + 1:]), "keys after the query have no weight"
        assert f"{weights.max():.3f}" in panel.top


@pytest.mark.parametrize("snapshot", [0, 1, 2])
def test_hovering_a_token_shows_each_heads_pattern(driver, built, snapshot):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    view = open_view(driver, built.index)
    options = Select(view.find_element(By.CSS_SELECTOR, "select.attn-snapshot"))
    if snapshot >= len(options.options):
        pytest.skip("this run shows fewer snapshots")
    options.select_by_index(snapshot)
    classes = HeadScores.of_run(built.run, selected_step(view)).classes
    tokens = query_tokens(view)
    for q in (0, 17, len(tokens) - 1, 40):
        ActionChains(driver).move_to_element(tokens[q]).perform()
        assert_shows_query(driver, view, built.run, q)
    assert {head: panel.cls for head, panel in shown(driver, view).items()} == {
        f"{l}.{h}": classes[l, h] for l in range(classes.shape[0]) for h in range(classes.shape[1])}


def test_keyboard_focus_moves_the_query(driver, built):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    view = open_view(driver, built.index)
    for _ in range(20):                             # Tab through the page to the first token
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.switch_to.active_element.get_attribute("data-pos") is not None:
            break
    assert driver.switch_to.active_element.get_attribute("data-pos") == "0"
    assert_shows_query(driver, view, built.run, 0)
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT * 5 + Keys.ARROW_LEFT).perform()
    assert driver.switch_to.active_element.get_attribute("data-pos") == "4"
    assert_shows_query(driver, view, built.run, 4)


def test_choosing_a_head_shows_that_head_alone(driver, built):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    view = open_view(driver, built.index)
    heads = Select(view.find_element(By.CSS_SELECTOR, "select.attn-head"))
    heads.select_by_value("1.0")
    assert [h for h, panel in shown(driver, view).items() if panel.visible] == ["1.0"]
    heads.select_by_value("all")
    assert all(panel.visible for panel in shown(driver, view).values())


def test_the_report_opens_offline_without_console_errors(driver, built):
    from selenium.webdriver.common.action_chains import ActionChains
    driver.get_log("browser"), requested_urls(driver)        # what earlier tests left
    view = open_view(driver, built.index)
    ActionChains(driver).move_to_element(query_tokens(view)[10]).perform()
    assert check_images(built.index) == []
    links = driver.execute_script("""return [...document.querySelectorAll('[src],[href]')]
        .map(e => e.getAttribute('src') || e.getAttribute('href'))""")
    assert links and not [u for u in links if re.match(r"(https?:)?//", u)]
    requested = requested_urls(driver)
    assert any(u.endswith(".png") for u in requested)                # the figures...
    assert all(u.startswith("file://") for u in requested), requested  # ... from disk, nothing else
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_passage_with_markup_is_shown_as_text(driver, built):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    driver.get_log("browser")
    view = open_view(driver, built.markup)
    expected = [BYTES.label(t) for t in table.passage_tokens(MARKUP, built.run.config.n_ctx)]
    assert [s.get_attribute("textContent") for s in query_tokens(view)] == expected
    assert "\\xc3" in expected and "\\xa9" in expected and "</script>" in "".join(expected)
    assert driver.execute_script("return typeof injected") == "undefined"
    assert driver.find_elements(By.CSS_SELECTOR, ".attn-view img, .attn-view script:not(.attn-data)") == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_closed_view_is_drawn_when_opened(driver, built):
    from selenium.webdriver.common.by import By
    view = open_view(driver, built.markup, n=1)
    assert view.get_attribute("data-built") is None and query_tokens(view) == []
    from selenium.webdriver.support.ui import WebDriverWait
    view.find_element(By.TAG_NAME, "summary").click()
    # the page draws on <details>' toggle event, which the browser fires after the click
    # returns: wait for it (up to 10 s) instead of racing it
    WebDriverWait(driver, 10).until(lambda _: view.get_attribute("data-built") is not None)
    assert view.get_attribute("data-built") == "1" and len(query_tokens(view)) == len(MARKUP.encode()) + 1
