"""A headless Chromium driven by Selenium, for the tests that load a page from file:// and
act on it as a user would (tests/test_attention_view.py). skip_reason() says what is
missing where there is none: Debian's chromium and chromium-driver packages and selenium
(the dev extras) are what they need."""
import os
import shutil

from experiments.screenshot import find_chromium


def find_chromedriver():
    """Path of $CHROMEDRIVER, else of chromedriver on PATH; None if there is none."""
    return shutil.which(os.environ.get("CHROMEDRIVER") or "chromedriver")


def skip_reason():
    """Why no browser test can run here (a sentence), or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e .[dev])"
    if find_chromium() is None:
        return "needs headless Chromium (apt-get install chromium, or CHROMIUM=/path)"
    if find_chromedriver() is None:
        return "needs chromedriver (apt-get install chromium-driver, or CHROMEDRIVER=/path)"
    return None


def start_chromium(width=1400, height=1000):
    """A headless Chromium WebDriver with a fresh profile, keeping the console log and the
    DevTools events (requested_urls reads them). The browser and driver are given by path,
    so Selenium never looks for one on the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = find_chromium()
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(find_chromedriver()))


def requested_urls(driver):
    """Every URL the browser requested since the last call (DevTools Network events)."""
    import json
    events = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
