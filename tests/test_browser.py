"""The published book as a reader sees it: every chapter opened in headless Chromium.

The book is built once (tests/conftest.py), served on localhost and opened chapter by chapter in
Debian's `chromium` through Debian's `chromedriver` (installed by `python3 -m wm test`, see
wm._setup.ensure_chromium; nothing is downloaded here). Per chapter: no broken image, no error
output cell, every figure of the source rendered and loaded with alt text and a caption, the
provenance banner on executed chapters, and a full-page screenshot in $WM_SCREENSHOTS (default
_build/screenshots/) that outlives the test. A missing browser fails the test, never skips it:
CI must prove the browser test ran.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import toc_files
from wm import ROOT, _setup

pytestmark = pytest.mark.slow

STUDIES = ("book/null_embedding", "book/watermas", "book/image_processing")
BANNER_WORDS = ("Provenance", "profile", "device", "commit", "date", "wall time")
MAX_SCREENSHOT_HEIGHT = 24000  # px; a longer page is saved in parts (NAME.png, NAME-2.png, ...)
FIGURE_DIRECTIVE = re.compile(r"^\s*(```+|:::+)\{(glue:figure|figure)\}", re.MULTILINE)

# One script per page, run after load: everything the assertions need, read from the live DOM.
INSPECT_JS = """
const text = el => (el ? el.textContent.replace(/\\s+/g, ' ').trim() : '');
const main = document.querySelector('main') || document.body;
const imgs = Array.from(document.images).map(img => ({
  src: img.getAttribute('src'),
  loaded: img.complete && img.naturalWidth > 0,
  width: img.naturalWidth,
  alt: (img.getAttribute('alt') || '').trim(),
  inMain: main.contains(img),
  inFigure: img.closest('figure') !== null,
}));
const figures = Array.from(main.querySelectorAll('figure')).map(fig => ({
  id: fig.id,
  caption: text(fig.querySelector('figcaption')),
  imgs: fig.querySelectorAll('img').length,
}));
const banners = Array.from(main.querySelectorAll('div.admonition'))
  .filter(a => text(a.querySelector('.admonition-title')) === 'Provenance')
  .map(a => text(a));
// myst-nb renders an error output (a traceback, `ename`) as div.output.traceback; Sphinx marks
// unresolved markup with .system-message / .problematic. A stderr stream is not an error (tqdm
// bars, library warnings), unless it holds a printed traceback.
const errors = Array.from(main.querySelectorAll(
    '.cell_output .output.traceback, .cell_output .output.error, .system-message, .problematic'))
  .map(e => text(e).slice(0, 300));
const stderrTracebacks = Array.from(main.querySelectorAll('.cell_output .output.stderr'))
  .map(text).filter(t => t.includes('Traceback (most recent call last)')).map(t => t.slice(0, 300));
return {title: document.title, h1: text(document.querySelector('main h1')), imgs, figures, banners,
        errors, stderrTracebacks, cellOutputs: main.querySelectorAll('.cell_output').length,
        height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)};
"""


def _source(chapter: str) -> Path:
    return next(p for p in (ROOT / f"{chapter}.ipynb", ROOT / f"{chapter}.md") if p.exists())


def _figure_directives(chapter: str) -> int:
    """How many figure / glue:figure directives the chapter's source holds (its markdown cells)."""
    src = _source(chapter)
    if src.suffix == ".md":
        return len(FIGURE_DIRECTIVE.findall(src.read_text()))
    cells = json.loads(src.read_text())["cells"]
    return sum(len(FIGURE_DIRECTIVE.findall("".join(c["source"]))) for c in cells if c["cell_type"] == "markdown")


def _screenshot_dir() -> Path:
    folder = Path(os.environ["WM_SCREENSHOTS"]) if os.environ.get("WM_SCREENSHOTS") else ROOT / "_build" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def _full_page_screenshots(driver, name: str, height: int) -> list[Path]:
    """Save the whole page: one screenshot with the window as tall as the document, or, beyond
    MAX_SCREENSHOT_HEIGHT, consecutive parts of that height. Returns the files written."""
    folder = _screenshot_dir()
    for old in folder.glob(f"{name}*.png"):  # parts of an earlier, longer run
        if re.fullmatch(rf"{re.escape(name)}(-\d+)?\.png", old.name):
            old.unlink()
    part = min(height, MAX_SCREENSHOT_HEIGHT)
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(1280, part + chrome)
    shots = []
    for k, top in enumerate(range(0, height, part)):
        driver.execute_script("window.scrollTo(0, arguments[0])", top)
        time.sleep(0.1 if k else 0)
        shot = folder / (f"{name}.png" if k == 0 else f"{name}-{k + 1}.png")
        assert driver.save_screenshot(str(shot)), f"could not write {shot}"
        shots.append(shot)
    driver.execute_script("window.scrollTo(0, 0)")
    return shots


@pytest.fixture(scope="module")
def site(book_build):
    """The built HTML served on 127.0.0.1 (a free port) for the module; yields its base URL."""
    html = book_build.require_success()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Debian's chromedriver; fails (never skips) if they are missing."""
    try:
        chromium, chromedriver = _setup.ensure_chromium()
    except _setup.BrowserError as err:
        pytest.fail(str(err), pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                # hermetic: only the local server answers, so a CDN (MathJax) neither helps nor hangs
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(chromedriver)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for_images(driver, timeout: float = 30.0) -> None:
    """Until every <img> has finished (loaded or failed): `complete` is true for both."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("return Array.from(document.images).every(i => i.complete)"):
            return
        time.sleep(0.2)


def test_every_study_chapter_is_in_the_toc():
    assert set(STUDIES) <= set(toc_files())


@pytest.mark.parametrize("chapter", toc_files())
def test_chapter_in_chromium(chapter, site, browser):
    browser.set_window_size(1280, 2000)
    browser.get(f"{site}/{chapter}.html")  # returns after the load event: images fetched or failed
    assert browser.execute_script("return document.readyState") == "complete"
    # the window as tall as the document (capped), so that any lazily loaded image loads too
    height = browser.execute_script(INSPECT_JS)["height"]
    browser.set_window_size(1280, min(max(height, 800), MAX_SCREENSHOT_HEIGHT))
    _wait_for_images(browser)
    page = browser.execute_script(INSPECT_JS)
    shots = _full_page_screenshots(browser, chapter.replace("/", "__"), page["height"])

    assert "404" not in page["title"] and page["h1"], f"{chapter}: no chapter heading ({page['title']!r})"
    broken = [i["src"] for i in page["imgs"] if not i["loaded"]]
    assert not broken, f"{chapter}: {len(broken)} of {len(page['imgs'])} images did not load: {broken}"
    assert not page["errors"], f"{chapter}: error output in the page: {page['errors']}"
    assert not page["stderrTracebacks"], f"{chapter}: a traceback printed to stderr: {page['stderrTracebacks']}"

    # figures: as many as the source's figure directives, each with a loaded image and a caption
    expected = _figure_directives(chapter)
    figures = page["figures"]
    assert len(figures) == expected, f"{chapter}: {len(figures)} figures rendered, the source has {expected}"
    for fig in figures:
        assert fig["imgs"] >= 1, f"{chapter}: figure {fig['id']!r} holds no image"
        assert fig["caption"], f"{chapter}: figure {fig['id']!r} has no caption"
    content_imgs = [i for i in page["imgs"] if i["inMain"]]
    for img in content_imgs:  # docutils writes the file name as alt when none is given
        assert img["alt"] and img["alt"] != img["src"] and not img["alt"].endswith(".png"), \
            f"{chapter}: image {img['src']} has no alt text"
        assert img["inFigure"], f"{chapter}: image {img['src']} is not a captioned figure"
    if expected:
        assert len(content_imgs) >= expected

    # executed chapters carry the provenance banner the runner writes
    if chapter in STUDIES or _source(chapter).suffix == ".ipynb":
        assert len(page["banners"]) == 1, f"{chapter}: expected one Provenance banner, found {len(page['banners'])}"
        banner = page["banners"][0]
        missing = [w for w in BANNER_WORDS if w not in banner]
        assert not missing, f"{chapter}: the provenance banner lacks {missing}: {banner[:300]}"

    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{chapter}: screenshot {shot} is (nearly) empty"
