"""The page at `/` in a real browser: Playwright for Python driving Debian's chromium, headless,
against `vislang serve`'s app under uvicorn on loopback, over a small synthetic catalog.

It types a query and sees result images, clicks a result and sees similar items (and what goes
with them), goes back, uploads a photo and sees results and a caption, narrows the photo with a
text, downloads the results as JSON, opens a shared address on a phone-sized screen, drops a photo
on the page and sees a refusal's message. The
screenshots go to the test's tmp folder; with VISLANG_SCREENSHOTS=DIR they are copied there too.
README's docs/serve.png is `serve.png` of such a run (VISLANG_SCREENSHOTS=/tmp/shots, then copy it).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[test]')")
pytest.importorskip("fastapi")

import vislang  # noqa: E402
from vislang.data import read_catalog  # noqa: E402
from vislang.search import Index  # noqa: E402
from vislang.serve.app import create_app  # noqa: E402

from conftest import live_server, make_catalog  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not at /usr/bin/chromium "
                                                      "(.ci/run installs it with apt-get install chromium)"),
    pytest.mark.usefixtures("one_thread"),
]
expect = sync_api.expect
ALL_LOADED = "sel => [...document.querySelectorAll(sel)].every(img => img.complete && img.naturalWidth > 0)"


@pytest.fixture(scope="module")
def site(tiny_checkpoint, tmp_path_factory):
    """The tiny model over the same synthetic catalog drawn at 160 px, so that people can see it."""
    catalog = make_catalog(tmp_path_factory.mktemp("shop"), size=160)
    index = Index.build(vislang.load(tiny_checkpoint, device="cpu"), read_catalog(catalog), progress=False, gpu=False)
    with live_server(create_app(index)) as base:
        yield base, catalog


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def screenshot(page, folder: Path, name: str, full_page: bool = True) -> Path:
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("VISLANG_SCREENSHOTS"):
        keep = Path(os.environ["VISLANG_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep / name)
    return path


def images_loaded(page, selector: str) -> None:
    expect(page.locator(selector).first).to_be_visible()
    page.wait_for_function(ALL_LOADED, arg=selector, timeout=30_000)


def shown_ids(page, selector: str = "#results .card") -> list[str]:
    return page.locator(selector).evaluate_all("cards => cards.map(card => card.dataset.id)")


def test_search_click_photo_caption_download_and_phone(site, browser, tmp_path):
    base, catalog = site
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(base + "/")
    expect(page.locator("#catalog")).to_have_text("56 items: 48 products, 8 rooms")

    # type a query: result images
    page.fill("#q", "a red chair")
    page.press("#q", "Enter")
    expect(page.locator("#status")).to_have_text("24 results for “a red chair”")
    expect(page.locator("#results .card")).to_have_count(24)
    images_loaded(page, "#results img")
    assert page.url == base + "/?q=a+red+chair"
    expect(page.locator("#results .card h3").first).not_to_be_empty()
    screenshot(page, tmp_path, "1-text-search.png")

    # the room/product switch searches again, products only, and the address says so
    page.locator(".kinds label", has_text="Products").click()
    page.wait_for_url("**/?q=a+red+chair&kind=product")
    expect(page.locator('#results .card[data-kind="room"]')).to_have_count(0)
    expect(page.locator('#results .card[data-kind="product"]')).to_have_count(24)
    text_results = shown_ids(page)

    # the address is the search: reload it and get the same results
    page.reload()
    expect(page.locator("#q")).to_have_value("a red chair")
    expect(page.locator("#results .card")).to_have_count(24)
    assert shown_ids(page) == text_results and page.locator('input[name="kind"][value="product"]').is_checked()

    # the results as JSON
    with page.expect_download() as download:
        page.click("#download")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["query"] == "a red chair" and [hit["id"] for hit in saved["results"]] == text_results

    # click a result: things like it, and what goes with it
    first = page.locator("#results .card").first
    title = first.locator("h3").inner_text()
    first.locator(".card-button").click()
    expect(page.locator("#focus-title")).to_have_text(title)
    expect(page.locator("#status")).to_have_text(f"24 things like “{title}”")
    expect(page.locator("#goes-with-strip .card").first).to_be_visible()
    assert text_results[0] not in shown_ids(page) and f"similar={text_results[0]}" in page.url
    images_loaded(page, "#results img, #goes-with-strip img, #focus-image")
    screenshot(page, tmp_path, "2-more-like-this.png")
    page.go_back()
    expect(page.locator("#status")).to_have_text("24 results for “a red chair”")
    expect(page.locator("#focus")).to_be_hidden()

    # upload a photo: results like it, and its caption
    photo = catalog / "images" / "products" / "008.000.00.jpg"  # a blue chair of the catalog
    page.set_input_files("#photo", str(photo))
    expect(page.locator("#status")).to_have_text("24 results like your photo")
    expect(page.locator("#caption")).to_be_visible()
    assert page.locator("#caption").inner_text().strip()
    assert shown_ids(page)[0] == "008.000.00"  # the catalog's own photo comes first
    images_loaded(page, "#results img, #preview")
    screenshot(page, tmp_path, "3-photo-search.png")
    screenshot(page, tmp_path, "serve.png", full_page=False)  # README's picture: the first screen

    # the photo changed with words
    page.fill("#photo-q", "in red")
    page.click("text=Search with photo")
    expect(page.locator("#status")).to_have_text("24 results like your photo, in red")

    # a shared address on a phone: the page fits its width
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    phone.goto(base + "/?q=a+blue+lamp&kind=product")
    expect(phone.locator("#results .card")).to_have_count(24)
    images_loaded(phone, "#results img")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(phone, tmp_path, "4-phone.png", full_page=False)

    assert not errors, errors
    for name in ("1-text-search.png", "2-more-like-this.png", "3-photo-search.png", "serve.png", "4-phone.png"):
        assert (tmp_path / name).stat().st_size > 10_000


DROP = """async ([url, name]) => {
    const photo = new File([await (await fetch(url)).blob()], name, {type: "image/jpeg"});
    const transfer = new DataTransfer();
    transfer.items.add(photo);
    document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


def test_a_dropped_photo_and_a_refusal(site, browser, tmp_path):
    base, _ = site
    page = browser.new_page()
    page.goto(base + "/")
    expect(page.locator("#catalog")).not_to_be_empty()
    page.evaluate(DROP, [base + "/images/016.000.00", "dropped.jpg"])  # a green lamp, dragged in
    expect(page.locator("#status")).to_have_text("24 results like your photo")
    assert shown_ids(page)[0] == "016.000.00"
    expect(page.locator("#caption")).to_be_visible()
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo\n" * 50)
    page.set_input_files("#photo", str(notes))
    expect(page.locator("#error")).to_have_text("not an image: the upload must be a JPEG, PNG, WEBP, GIF, BMP photo")
    page.fill("#q", "a red chair")
    page.press("#q", "Enter")  # the page goes on working
    expect(page.locator("#results .card")).to_have_count(24)
    expect(page.locator("#error")).to_be_hidden()
