"""The course site (book/build.py, `make site`) in a real browser: headless Chromium driven by Playwright.

The module fixture builds the site once into a tmp folder as `make site` does: chapters executed with papermill
and the quick profile, then rendered by Sphinx + myst-nb without re-execution. Executing the chapters costs
minutes, and tests/test_notebooks.py already does exactly that in the same session (same parameters, cwd and
kernel), so when its executed copies are found under this session's pytest basetemp they are rendered as they
are; otherwise (this file run alone) the fixture executes the chapters itself. SAS_KIT_SITE_EXECUTED=DIR
renders the executed chapters in DIR (e.g. _build/site/src after `make site`); SAS_KIT_SITE_EXECUTE=0 renders
the committed, unexecuted chapters instead (seconds; the image and error checks then see little).
A static server on 127.0.0.1 serves the html folder; the landing page and every chapter page are opened in
Chromium and checked: the page renders (HTTP 200, a title, an h1, its text), every <img> loads
(naturalWidth > 0), no notebook error output (traceback / error / stderr blocks) is shown, and every internal
link (a, img, link, script; with its #fragment when it has one) answers 200. A test shows the same checks
failing on a broken page. Needs the site extra (sphinx, myst-nb, sphinx-book-theme), playwright and a Chromium
(see test_browser.py); skipped with the reason otherwise."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SAS_KIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
EXECUTE = os.environ.get("SAS_KIT_SITE_EXECUTE", "1") != "0"
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="pip install playwright (the test extra) to run browser tests")
pytest.importorskip("sphinx", reason="pip install -e '.[site]' to build the course site")
pytest.importorskip("myst_nb", reason="pip install -e '.[site]' to build the course site")
pytest.importorskip("sphinx_book_theme", reason="pip install -e '.[site]' to build the course site")

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: `apt-get install chromium` or set "
                                                        "SAS_KIT_CHROMIUM (see README, 'Browser tests')")]

CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = ["index"] + CHAPTERS
# myst-nb's classes for a notebook's error and stderr outputs (nb_output_stderr "show"), and a raw traceback
ERROR_SELECTOR = "div.output.traceback, div.output.error, div.output.stderr, .cell_output .traceback"


def _load_build():
    spec = importlib.util.spec_from_file_location("sas_site_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executed_in_this_session(tmp_path_factory) -> Path | None:
    """The chapters tests/test_notebooks.py::test_notebook_executes_with_papermill wrote in this session, if all
    of them are there (pytest names each test's tmp_path after the test)."""
    found = {p.name: p for p in tmp_path_factory.getbasetemp().glob("test_notebook_executes_with*/*.ipynb")}
    if not CHAPTERS or any(f"{c}.ipynb" not in found for c in CHAPTERS):
        return None
    folder = tmp_path_factory.mktemp("executed")
    for c in CHAPTERS:
        shutil.copy2(found[f"{c}.ipynb"], folder / f"{c}.ipynb")
    return folder


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # Chromium dropping a connection is not a failure
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base_url, html_dir): the site built once into a tmp folder, served on 127.0.0.1."""
    out = tmp_path_factory.mktemp("site")
    executed = (Path(os.environ["SAS_KIT_SITE_EXECUTED"]) if os.environ.get("SAS_KIT_SITE_EXECUTED")
                else _executed_in_this_session(tmp_path_factory) if EXECUTE else None)
    t0 = time.monotonic()
    html = _load_build().build(out, executed=executed, run=EXECUTE)
    how = (f"rendered from the executed chapters in {executed}" if executed else
           "chapters executed here" if EXECUTE else "chapters not executed")
    print(f"site built in {time.monotonic() - t0:.0f} s ({how})")
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", html
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@functools.lru_cache(maxsize=None)
def _ids(page_url: str) -> frozenset[str]:
    with urllib.request.urlopen(page_url, timeout=10) as r:
        text = r.read().decode("utf-8", "replace")
    return frozenset(re.findall(r'\bid="([^"]+)"', text))


def page_problems(browser, base: str, url: str) -> list[str]:
    """Everything wrong with one page as Chromium shows it (empty when the page passes)."""
    problems: list[str] = []
    page = browser.new_page()
    try:
        response = page.goto(url, wait_until="load", timeout=60_000)
        if response is None or response.status != 200:
            return [f"{url}: HTTP {response.status if response else 'no response'}"]
        if not page.title().strip():
            problems.append(f"{url}: no <title>")
        main = page.locator("main, article, [role=main]").first
        if main.count() == 0 or len(main.inner_text().strip()) < 200:
            problems.append(f"{url}: the page has (almost) no text in its main area")
        if page.locator("h1").count() == 0:
            problems.append(f"{url}: no <h1>")
        broken = page.evaluate("""async () => {
            const imgs = [...document.images];
            imgs.forEach(i => { i.loading = 'eager'; i.scrollIntoView(); });
            await Promise.all(imgs.map(i => i.complete ? null
                : new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
            return imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src'));
        }""")
        problems += [f"{url}: image does not load: {src}" for src in broken]
        for el in page.locator(ERROR_SELECTOR).all():
            problems.append(f"{url}: error output shown: {el.inner_text()[:200]!r}")
        body = page.locator("body").inner_text()
        if "Traceback (most recent call last)" in body:
            problems.append(f"{url}: a traceback is shown")
        links = page.evaluate("""() => [
            ...[...document.querySelectorAll('a[href]')].map(a => a.href),
            ...[...document.querySelectorAll('img[src], script[src]')].map(e => e.src),
            ...[...document.querySelectorAll('link[href]')].map(l => l.href)]""")
    finally:
        page.close()
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue  # external (arXiv, the repository): not ours to check offline
        target, _, fragment = link.partition("#")
        status = _status(target)
        if status != 200:
            problems.append(f"{url}: internal link {link} answers HTTP {status}")
        elif fragment and (target.endswith(".html") or target.endswith("/")):
            if urllib.parse.unquote(fragment) not in _ids(target):
                problems.append(f"{url}: internal link {link}: no id {fragment!r} on that page")
    return problems


def test_site_has_a_page_per_chapter_and_a_landing_page(site):
    _, html = site
    assert (html / "index.html").exists()
    for stem in CHAPTERS:
        assert (html / f"{stem}.html").exists(), stem


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_with_images_no_errors_and_live_links(site, browser, name):
    base, _ = site
    assert page_problems(browser, base, f"{base}{name}.html") == []


def test_landing_page_results_are_the_committed_summaries(site, browser):
    """Each 'What the numbers say' bullet of docs/results/*/summary.md is on the landing page, word for word."""
    base, _ = site
    build = _load_build()
    page = browser.new_page()
    try:
        page.goto(f"{base}index.html")
        text = re.sub(r"\s+", " ", page.locator("main, article").first.inner_text())
    finally:
        page.close()
    shown = 0
    for name, _ in build.RUNS:
        summary = ROOT / "docs" / "results" / name / "summary.md"
        if not summary.exists():
            continue
        for line in build._section(summary.read_text(), build.SECTION).splitlines():
            bullet = re.sub(r"\s+", " ", line.removeprefix("- ").replace("`", "").replace("**", "")).strip()
            if bullet:
                assert bullet in text, f"landing page lacks, from {summary}: {bullet}"
                shown += 1
    assert shown >= 3
    if EXECUTE:
        assert "Interactive widget" in (site[1] / "02_sas_augmentation.html").read_text()


def test_the_checks_fail_on_a_broken_page(site, browser):
    base, html = site
    (html / "broken_for_test.html").write_text(
        "<html><head><title>broken</title></head><body><main><h1>Broken</h1>" + "<p>text</p>" * 60
        + '<img src="_images/missing.png"><a href="nowhere.html">dead</a><a href="index.html#no-such-id">x</a>'
        + '<div class="cell_output docutils container"><div class="output traceback highlight-ipythontb">'
        + "<pre>Traceback (most recent call last):\nValueError: boom</pre></div></div></main></body></html>")
    try:
        problems = "\n".join(page_problems(browser, base, f"{base}broken_for_test.html"))
    finally:
        (html / "broken_for_test.html").unlink()
    assert "image does not load: _images/missing.png" in problems
    assert "nowhere.html answers HTTP 404" in problems
    assert "no id 'no-such-id'" in problems
    assert "error output shown" in problems and "a traceback is shown" in problems
