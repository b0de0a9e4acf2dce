"""End to end: 'medclassify serve' on a loopback port, the web page in headless Chromium (Debian's
chromium + chromedriver, driven by Selenium), an image uploaded, the predicted class and the
overlay of the default method (LayerCAM) on the page. Skipped, with the reason, where Chromium is not
installed (.ci/run installs it when it runs as root)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import quadrant_images, serving
from test_inference import quadrant_dicom

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # a real server and a headless browser
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it as root)",
    ),
]


LONG_NAME = "a class name far longer than any card is wide, written without a single break_" * 2


@pytest.fixture(scope="module")
def server(quadrant_run, tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("server")
    bundle = torch.load(quadrant_run / "best.pt", weights_only=True)  # the same model, one class renamed at length
    bundle["dataset"]["class_names"] = [
        LONG_NAME if name == "none" else name for name in bundle["dataset"]["class_names"]
    ]
    # conformal sets whose threshold keeps every class: each card states a set of all five
    bundle["conformal"] = {"alpha": 0.1, "score": "lac", "threshold": 1.0, "mondrian": False, "fitted_on": "val"}
    torch.save(bundle, folder / "long.pt")
    with serving([f"quadrants={quadrant_run}", f"long={folder / 'long.pt'}"], folder / "server.log") as (_, url):
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
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
    # what a person sees: each bar's filled width is its probability's share of the track
    for bar in bars:
        shown = float(bar.find_element(By.CSS_SELECTOR, ".value").text.rstrip("%")) / 100
        track = bar.find_element(By.CSS_SELECTOR, ".track").rect["width"]
        fill = bar.find_element(By.CSS_SELECTOR, ".fill").rect["width"]
        assert track > 50 and fill == pytest.approx(shown * track, abs=1.5), (shown, fill, track)
    assert not browser.find_elements(By.CSS_SELECTOR, ".card .prediction-set")  # no conformal calibration
    heatmap = browser.find_element(By.CSS_SELECTOR, "img[alt='LayerCAM for bottom-right']")
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    wait.until(
        lambda driver: (
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap) >= 224
        )
    )

    # the method selector: another method's overlay, named in its caption
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "method")).select_by_visible_text("Occlusion")
    browser.find_element(By.ID, "files").send_keys(str(tmp_path / "scan.png"))
    occlusion = wait.until(
        ready.presence_of_element_located((By.CSS_SELECTOR, "img[alt='Occlusion for bottom-right']"))
    )
    wait.until(
        lambda driver: (
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", occlusion) >= 224
        )
    )

    browser.find_element(By.ID, "files").send_keys(str(tmp_path / "broken.png"))
    error = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".card .error")))
    assert error.text.startswith("Rejected: broken.png: not a readable image")
    assert error.get_attribute("role") == "alert"
    browser.save_screenshot(os.fspath(tmp_path / "page.png"))
    with Image.open(tmp_path / "page.png") as shot:
        assert np.asarray(shot).std() > 0  # something was drawn


def test_cards_keep_the_selection_order_show_dicom_and_contain_long_names(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    names = ["top-left", "top-right", "bottom-left"]
    for i, name in enumerate(names):
        Image.fromarray(quadrant_images(name, 1, size=64)[0]).save(tmp_path / f"{i}-{name}.png")
    Image.fromarray(quadrant_images("none", 1, size=64)[0]).save(tmp_path / "3-none.png")
    quadrant_dicom(tmp_path / "4-scan.dcm", "bottom-right")
    wait = WebDriverWait(browser, 60)
    browser.get(server)
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
    Select(browser.find_element(By.ID, "model")).select_by_value("long")
    files = [tmp_path / f"{i}-{name}.png" for i, name in enumerate(names)] + [
        tmp_path / "3-none.png",
        tmp_path / "4-scan.dcm",
    ]
    browser.find_element(By.ID, "files").send_keys("\n".join(map(str, files)))
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".card .predicted")) == 5)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert [card.find_element(By.TAG_NAME, "h2").text for card in cards] == [f.name for f in files]  # the order chosen
    assert cards[3].find_element(By.CSS_SELECTOR, ".predicted").text == LONG_NAME
    for card in cards:  # nothing sticks out of a card, whatever the class names
        assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", card)
        # the conformal set in plain words: every class, most probable first, as the bars list them
        shown = [bar.text for bar in card.find_elements(By.CSS_SELECTOR, ".bars .name")]
        statement = card.find_element(By.CSS_SELECTOR, ".prediction-set")
        assert statement.is_displayed() and statement.text == f"With 90% confidence one of: {', '.join(shown)}."
    dicom_image = cards[4].find_element(By.CSS_SELECTOR, "img[alt='image']")
    wait.until(
        lambda driver: (
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", dicom_image) == 128
        )
    )


def test_the_documentation_site_searches_and_shows_its_figures_from_the_disk(built_site, browser):
    """The built site opened as files, without a server or a network: search finds the conformal
    section, a tutorial's figure loads, and the language switch leads to the Chinese page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((built_site / "index.html").as_uri())
    box = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, "input.md-search__input"))
    browser.execute_script(
        "const t = document.getElementById('__search'); t.checked = true; t.dispatchEvent(new Event('change'));"
    )
    box.send_keys("conformal")
    titles = WebDriverWait(browser, 20).until(
        lambda d: (
            [(e.text.splitlines() or [""])[0] for e in d.find_elements(By.CSS_SELECTOR, ".md-search-result__item")]
            or None
        )
    )
    assert any("conformal sets" in title for title in titles), titles

    browser.get((built_site / "tutorials" / "trustworthy-predictions.html").as_uri())
    figure = browser.find_element(By.CSS_SELECTOR, "img[src$='blood_conformal.png']")
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return arguments[0].complete", figure))
    assert browser.execute_script("return arguments[0].naturalWidth", figure) > 1000
    assert 0 < figure.size["width"] <= browser.execute_script("return document.documentElement.clientWidth")

    browser.get((built_site / "tutorials" / "reproduce-the-paper.html").as_uri())
    switch = browser.find_element(By.CSS_SELECTOR, "a[hreflang='zh']")
    browser.get(switch.get_attribute("href"))
    assert "复现论文" in browser.find_element(By.TAG_NAME, "h1").text
