"""What the browser journeys share: a headless Chromium (Debian's chromium and
chromium-driver) under Selenium, waiting, screenshots of whole pages."""

import os

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.support.ui import WebDriverWait


def step(text):
    print(f"-- {text}", flush=True)


def browser():
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900",
              "--disable-gpu", "--no-first-run"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def shot(d, name):
    """The whole page (not just the window) as $SHOTS/NAME.png."""
    shots = os.environ["SHOTS"]
    os.makedirs(shots, exist_ok=True)
    h = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1366, min(max(h, 700), 2400))
    d.save_screenshot(os.path.join(shots, f"{name}.png"))
    d.set_window_size(1366, 900)


def wait(d, cond, secs=15):
    """Waits for `cond`. An element found on the page a click is replacing is not an
    error but "not yet": Chromium reports it as a node that no longer belongs to the
    document (regression: a CI run failed so after the queue's Delete)."""

    def settled(driver):
        try:
            return cond(driver)
        except StaleElementReferenceException:
            return False
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return False
            raise

    return WebDriverWait(d, secs).until(settled)
