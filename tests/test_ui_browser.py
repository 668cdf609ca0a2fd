"""End to end in a real browser: Playwright drives Debian's Chromium (never a downloaded browser)
against the app running in-process on 127.0.0.1.

One user types a prompt and generates: the preview changes while it runs, a playable ``<video>``
and the memory plot appear, and the page never talks to anything but the app. Then, with two
tabs: the second waits in the queue (and shows its position) while the first runs; closing the
running tab cancels its job while its finished chunks still land as a playable MP4; Stop keeps
the finished part of a running job and drops a queued one.

Skipped (with the reason) only when playwright or /usr/bin/chromium is missing and CI is not
"true"; under CI a missing browser fails. Screenshots go to the test's tmp dir; set
``VIDEOMLA_UI_SCREENSHOT=path.png`` to also keep the final one as a small palette PNG. The README's
``assets/ui_screenshot.png`` is made that way, with ``VIDEOMLA_UI_TEST_MODEL=tiny``.
"""

import importlib.util
import os
import re
import socket
import time

import pytest
import torch
from PIL import Image

from videomla_app.video_io import probe

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = os.environ.get("VIDEOMLA_UI_TEST_MODEL", "test-mla")
VIDEO_READY = "() => { const v = document.querySelector('#result video'); return v && v.readyState >= 2 }"

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # from gradio's queueing


def browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright python package is not installed (pip install playwright; no browser download)"
    if not os.path.exists(CHROMIUM):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = browser_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from videomla_app.ui import launch

    threads, temp = torch.get_num_threads(), os.environ.get("GRADIO_TEMP_DIR")
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, url, folder = launch(model=MODEL, port=port, folder=tmp_path_factory.mktemp("ui-out"),
                               prevent_thread_lock=True, quiet=True)
    yield url, folder
    demo.close()
    torch.set_num_threads(threads)
    if temp is None:
        os.environ.pop("GRADIO_TEMP_DIR")
    else:
        os.environ["GRADIO_TEMP_DIR"] = temp


def open_page(browser, url, foreign: list):
    """A tab on the app; every request it makes elsewhere is appended to ``foreign``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    def check(request) -> None:
        if not request.url.startswith((url, "data:", "blob:")):
            foreign.append(request.url)

    page.on("request", check)
    page.goto(url)
    page.get_by_label("Prompt", exact=True).wait_for()
    return page


def start(page, prompt: str, seconds: int) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    box = page.locator("#duration input[type=number]")
    box.fill(str(seconds))
    box.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()


def preview_src(page) -> str | None:
    img = page.locator("#preview img")
    return img.first.get_attribute("src") if img.count() else None


def test_generate_in_the_browser(browser, app, tmp_path):
    url, folder = app
    foreign: list[str] = []
    page = open_page(browser, url, foreign)
    start(page, "three green diamonds circling around over desert dunes", 10)
    sources, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and not page.evaluate(VIDEO_READY):
        src = preview_src(page)
        if src and (not sources or sources[-1] != src):
            sources.append(src)
        time.sleep(0.02)
    assert page.evaluate(VIDEO_READY), "the result <video> must become playable (readyState >= 2)"
    assert len(sources) >= 2, f"the preview must change during generation, saw {len(sources)} frame(s)"
    assert "Done" in page.locator("#status").inner_text()
    plot = page.locator("#memory-plot canvas, #memory-plot svg").first
    plot.wait_for()
    box = plot.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 100, "the memory plot must be drawn"
    assert "KV cache" in page.locator("#memory").inner_text()
    page.wait_for_timeout(300)  # let the player paint its first frame
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("VIDEOMLA_UI_SCREENSHOT"):  # 256 colours: a fifth of the size, looks the same
        Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
            os.environ["VIDEOMLA_UI_SCREENSHOT"], optimize=True)
    assert not foreign, f"the page must only talk to the app, also asked: {foreign[:5]}"
    page.close()


def test_queue_position_and_closed_tab(browser, app):
    url, folder = app
    foreign: list[str] = []
    runner, waiter = open_page(browser, url, foreign), open_page(browser, url, foreign)
    start(runner, "a ball in a closing tab", 120)
    runner.locator("#preview img").wait_for()  # it is generating
    start(waiter, "a ball that waited", 1)
    waiter.locator("#status").get_by_text(re.compile(r"queue: \d+/\d+")).wait_for(timeout=20000)  # Gradio's
    runner.close()  # closing the tab cancels its job, which frees the device for the waiting one
    waiter.wait_for_function(VIDEO_READY, timeout=60000)
    deadline, kept = time.monotonic() + 30, []
    while time.monotonic() < deadline and not kept:
        kept = [p for p in folder.glob("a-ball-in-a-closing-tab-*.mp4") if ".partial" not in p.name]
        time.sleep(0.1)
    assert kept, "the closed tab's finished chunks must land at the final path"
    info = probe(kept[0])
    assert 0 < info["frames"] < 120 * info["fps"]
    assert not foreign
    waiter.close()


def test_stop_buttons_keep_the_video_and_drop_a_queued_run(browser, app):
    url, folder = app
    foreign: list[str] = []
    runner, waiter = open_page(browser, url, foreign), open_page(browser, url, foreign)
    start(runner, "a ball that is stopped", 120)
    runner.locator("#preview img").wait_for()
    start(waiter, "a ball stopped in the queue", 2)
    waiter.locator("#status").get_by_text(re.compile(r"queue: \d+/\d+")).wait_for(timeout=20000)
    waiter.get_by_role("button", name="Stop", exact=True).click()  # while queued: it will not run
    runner.get_by_role("button", name="Stop", exact=True).click()  # while running: keeps what is made
    runner.locator("#status").get_by_text("Stopped early").wait_for(timeout=30000)
    runner.wait_for_function(VIDEO_READY, timeout=30000)
    waiter.locator("#status").get_by_text("Stopped before it started").wait_for(timeout=30000)
    assert runner.get_by_role("button", name="Generate", exact=True).is_enabled()
    assert not list(folder.glob("a-ball-stopped-in-the-queue-*"))
    kept = list(folder.glob("a-ball-that-is-stopped-*.mp4"))
    assert len(kept) == 1 and 0 < probe(kept[0])["frames"] < 120 * probe(kept[0])["fps"]
    assert not foreign
    runner.close()
    waiter.close()
