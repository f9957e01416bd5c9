"""A screenshot of the browser page (``GET /``) after it answered a question: docs/page.png.

Starts a local Ray (127.0.0.1) and the demo app (mUSE over the demo corpus, the demo pivot database),
opens the page in headless Chromium (Debian's ``chromium`` and ``chromedriver``, driven by Selenium
through an explicit ``Service``: Selenium Manager never downloads a driver), asks one question and
saves the page. tests/serve/test_browser.py drives the page with the same functions.

    python jobs/benchmarks/page_screenshot.py [--question "『ドン・キホーテ』の作者は誰ですか？"] \
        [--out docs/page.png] [--width 1000]

CJK passages need a CJK font for the screenshot (Debian: ``fonts-noto-cjk``); without one Chromium
draws boxes in their place (the tests do not depend on it).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, no sandbox (containers run as root), and nothing that reaches the network on its own.
CHROME_ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars")
REPO = Path(__file__).resolve().parents[2]


def missing_browser() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not found: install Debian's chromium and chromium-driver (apt install chromium chromium-driver)"
    return None


def start_driver(profile_dir: str, width: int = 1000, height: int = 900):
    """Headless Chromium with a fresh profile in ``profile_dir``, driven through /usr/bin/chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in CHROME_ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def wait_for(driver, condition, timeout: float = 90, what: str = "the page"):
    """``condition(driver)``'s first truthy value, polled until ``timeout`` seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def open_page(driver, url: str, api_key: str | None = None) -> None:
    """Load the page, wait until it read its settings, and type the API key into its key field."""
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    wait_for(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready",
             what="the page's settings")
    if api_key:
        driver.find_element(By.CSS_SELECTOR, "#key-box summary").click()
        driver.find_element(By.ID, "api-key").send_keys(api_key)


def ask(driver, question: str, lang: str = "auto", timeout: float = 90) -> str:
    """Type ``question`` (with ``lang`` picked), submit it with Enter as a keyboard user does, and
    wait for the page to finish: its state ("done" or "error")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    body = driver.find_element(By.TAG_NAME, "body")
    before = int(body.get_attribute("data-answered") or 0)
    Select(driver.find_element(By.ID, "lang")).select_by_value(lang)
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question + Keys.ENTER)
    wait_for(driver, lambda d: int(body.get_attribute("data-answered") or 0) > before, timeout,
             what=f"the answer to {question!r}")
    return body.get_attribute("data-state")


def screenshot(driver, path: Path) -> Path:
    """The whole page (its full height) as a PNG at ``path``."""
    size = driver.get_window_size()
    for _ in range(3):  # the window's height includes the browser's own frame: grow until the page fits
        missing = driver.execute_script("return document.documentElement.scrollHeight - window.innerHeight")
        if missing <= 0:
            break
        driver.set_window_size(size["width"], min(driver.get_window_size()["height"] + missing, 5000))
        time.sleep(0.3)  # a frame to lay out at the new size
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default="『ドン・キホーテ』の作者は誰ですか？")
    parser.add_argument("--out", default=str(REPO / "docs" / "page.png"))
    parser.add_argument("--width", type=int, default=1000)
    args = parser.parse_args(argv)
    why = missing_browser()
    if why:
        print(why, file=sys.stderr)
        return 1

    from ray import serve

    from ray_cora.configs.serve import ServeConfig
    from ray_cora.runtime import init_ray, shutdown_ray
    from ray_cora.serve.run import start_app

    init_ray(num_cpus=2)
    try:
        url = start_app(ServeConfig(port=free_port(), pivot_db="demo", max_replicas=1, replica_cpus=0.25, default_k=5))
        with tempfile.TemporaryDirectory(prefix="ray_cora_chromium_") as profile:
            driver = start_driver(profile, width=args.width)
            try:
                open_page(driver, url)
                state = ask(driver, args.question)
                if state != "done":
                    print(f"the page answered {state}: no screenshot", file=sys.stderr)
                    return 1
                print(f"wrote {screenshot(driver, Path(args.out))}")
            finally:
                driver.quit()
    finally:
        serve.shutdown()
        shutdown_ray()
    return 0


if __name__ == "__main__":
    sys.exit(main())
