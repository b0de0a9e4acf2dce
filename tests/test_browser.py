"""End to end: 'medclassify serve' on a loopback port, the web page in headless Chromium (Debian's
chromium + chromedriver, driven by Selenium), an image uploaded, the predicted class and the
Grad-CAM overlay on the page. Skipped, with the reason, where Chromium is not installed (.ci/run
installs it when it runs as root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import quadrant_images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(quadrant_run, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "medclassify", "serve", f"quadrants={quadrant_run}", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"the server exited: {log.read_text()}")
                time.sleep(0.25)
        else:
            pytest.fail(f"the server did not answer within 60 s: {log.read_text()}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_upload_shows_the_class_the_probabilities_and_the_heatmap(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    Image.fromarray(quadrant_images("bottom-right", 1, size=64)[0]).save(tmp_path / "scan.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    wait = WebDriverWait(browser, 60)
    browser.get(server)
    assert "not a diagnosis" in browser.find_element(By.CSS_SELECTOR, ".disclaimer").text
    wait.until(ready.text_to_be_present_in_element((By.ID, "model"), "quadrants"))
    assert "paper-cnn" in browser.find_element(By.ID, "model-info").text

    # keyboard: from the model list, Tab reaches the file chooser
    browser.find_element(By.ID, "model").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "files"

    browser.find_element(By.ID, "files").send_keys(str(tmp_path / "scan.png"))
    predicted = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".card .predicted")))
    assert predicted.text == "bottom-right"
    bars = browser.find_elements(By.CSS_SELECTOR, ".card .bars li")
    assert len(bars) == 5 and bars[0].find_element(By.CSS_SELECTOR, ".name").text == "bottom-right"
    heatmap = browser.find_element(By.CSS_SELECTOR, "img[alt='Grad-CAM for bottom-right']")
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    wait.until(lambda driver: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap) >= 224)

    browser.find_element(By.ID, "files").send_keys(str(tmp_path / "broken.png"))
    error = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".card .error")))
    assert error.text.startswith("Rejected: broken.png: not a readable image")
    assert error.get_attribute("role") == "alert"
    browser.save_screenshot(os.fspath(tmp_path / "page.png"))
    with Image.open(tmp_path / "page.png") as shot:
        assert np.asarray(shot).std() > 0  # something was drawn
