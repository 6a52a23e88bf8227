"""The web UI in a real headless Chromium (Debian's, driven by Playwright; no browser download):
streaming, Stop that ends only its own session, Regenerate, Remove last turn, inert HTML in output.
A screenshot is kept in test-artifacts/."""
import os
import re
import threading
import time
from pathlib import Path

import pytest

from baize.llm.base import LLM
from baize.serve.ui import escape_html, to_display

CHROMIUM = os.environ.get("BAIZE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PAYLOAD = ("Here is **bold** text and code:\n\n```python\ndef double(x):\n    return x * 2  # <b>not bold</b>\n```\n\n"
           "Inline `<i>code</i>`, then <img src=x onerror=\"window.__xss=1\"> and <script>window.__xss=2</script> "
           "and <a href=\"javascript:window.__xss=3\">a link</a> [md link](javascript:window.__xss=4) the end.")


def test_escape_html_outside_code():
    assert escape_html("a <b>x</b> & y") == "a &lt;b>x&lt;/b> &amp; y"
    assert escape_html("`<b>` and ```\n<div>\n```") == "`<b>` and ```\n<div>\n```"
    assert escape_html("open ```\n<div> still code") == "open ```\n<div> still code"  # a fence mid-stream
    assert to_display([{"role": "user", "content": "<i>"}])[0]["content"][0]["text"] == "&lt;i>"


class Stub(LLM):
    """Streams numbered answers word by word; 'xss' in the question gets the HTML payload at once."""
    name = "stub"
    system = None

    def __init__(self, words=120, delay=0.05):
        self.words, self.delay = words, delay
        self.started = self.finished = self.closed_early = 0
        self.lock = threading.Lock()

    def stream(self, messages, **kw):
        with self.lock:
            self.started += 1
            n = self.started
        if "xss" in messages[-1]["content"]:
            yield PAYLOAD
            return
        done = False
        try:
            yield f"answer-{n}:"
            for i in range(self.words):
                time.sleep(self.delay)
                yield f" w{i}"
            done = True
        finally:
            with self.lock:
                if done:
                    self.finished += 1
                else:
                    self.closed_early += 1


@pytest.fixture(scope="module")
def ui():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install_browser.sh")
    sync_api = pytest.importorskip("playwright.sync_api")
    from baize.serve.app import create_app
    from baize.serve.config import ServeConfig
    from baize.testing import running
    stub = Stub()
    app = create_app({"stub": stub, "other": Stub(words=3)}, ServeConfig(), ui=True)
    with running(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield url, browser, stub
        browser.close()


def open_page(url, browser):
    page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
    page.goto(url + "/")  # redirects to /ui/
    page.wait_for_selector("#baize-input textarea", timeout=60000)
    return page


def send(page, text):
    page.fill("#baize-input textarea", text)
    page.click("#baize-send")


def bot_text(page) -> str:
    msgs = page.locator("#baize-chat [data-testid='bot']")
    return msgs.last.inner_text() if msgs.count() else ""


def wait_text(page, pattern, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = bot_text(page)
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared; last answer: {bot_text(page)!r}")


def test_stream_stop_regenerate(ui):
    url, browser, stub = ui
    a, b = open_page(url, browser), open_page(url, browser)
    assert a.locator("#baize-model").is_visible()  # two models served: the picker is shown
    send(a, "Tell me a long story")
    first = wait_text(a, r"answer-1: w0 w1 w2")
    assert "w119" not in first  # it is still streaming: tokens arrive as they are made
    send(b, "Another long story")
    wait_text(b, r"answer-2: w0 w1")

    a.click("#baize-stop")
    time.sleep(0.5)
    stopped = bot_text(a)
    time.sleep(1.0)
    assert bot_text(a) == stopped and "w119" not in stopped  # A's generation ended here...
    assert stub.closed_early == 1
    wait_text(b, r"w119$", timeout=60)  # ...while B's ran to the end
    assert stub.finished == 1

    a.click("#baize-regenerate")
    text = wait_text(a, r"answer-3: w0 w1")
    assert "answer-1" not in text
    assert a.locator("#baize-chat [data-testid='user']").count() == 1  # the question is not repeated
    a.click("#baize-stop")
    a.click("#baize-undo")  # Remove last turn
    deadline = time.monotonic() + 10
    while a.locator("#baize-chat [data-testid='user']").count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a.locator("#baize-chat [data-testid='bot'], #baize-chat [data-testid='user']").count() == 0
    b.click("#baize-new")
    b.wait_for_function("!document.querySelector('#baize-chat [data-testid=\"user\"]')", timeout=10000)
    a.context.close()
    b.context.close()


def test_model_picker(ui):
    url, browser, stub = ui
    page = open_page(url, browser)
    page.click("#baize-model input")
    page.get_by_role("option", name="other").click()
    send(page, "Which model are you?")
    wait_text(page, r"^answer-1: w0 w1 w2$")  # the three-word stub, not the long one
    page.context.close()


def test_model_output_is_inert(ui):
    url, browser, stub = ui
    page = open_page(url, browser)
    alerts = []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    send(page, "show me some xss <img src=y onerror=\"window.__xss=5\">")
    wait_text(page, r"the end\.")
    time.sleep(0.5)
    chat = page.locator("#baize-chat")
    assert page.evaluate("window.__xss") is None and not alerts
    assert chat.locator("img, script, [onerror]").count() == 0
    assert chat.locator("a[href^='javascript']").count() == 0
    text = bot_text(page)
    assert '<img src=x onerror="window.__xss=1">' in text and "<script>" in text  # shown as text
    assert chat.locator("strong", has_text="bold").count() == 1  # Markdown still renders
    assert chat.locator("pre code .token").count() > 0  # and code is highlighted
    assert "<b>not bold</b>" in chat.locator("pre code").inner_text()
    page.click("text=Parameters")  # show the sliders in the screenshot
    page.wait_for_selector("text=Max history tokens")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-chat.png"), full_page=True)
    assert (ARTIFACTS / "ui-chat.png").stat().st_size > 10_000
    page.context.close()


def test_ui_needs_the_key_when_the_api_does():
    from fastapi.testclient import TestClient

    from baize.serve.app import create_app
    from baize.serve.config import ServeConfig
    app = create_app({"stub": Stub(words=1)}, ServeConfig(api_key="k"), ui=True)
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/ui/config").status_code == 401  # Gradio's own login: the password is the key
        assert c.post("/ui/login", data={"username": "me", "password": "wrong"}).status_code in (400, 401)
        assert c.post("/ui/login", data={"username": "me", "password": "k"}).status_code == 200
        assert c.get("/ui/config").status_code == 200


def test_stop_cancels_the_engine_rows(ui, tiny_model_dir, monkeypatch):
    """With a real local model, Stop reaches the batching engine: the row ends as cancelled."""
    _, browser, _ = ui
    from baize.serve.app import create_app
    from baize.serve.config import ServeConfig
    from baize.serve.loading import load_models
    from baize.testing import running
    models = load_models({"tiny": f"hf:{tiny_model_dir}"}, ServeConfig())
    engine, reqs = models["tiny"].engine, []
    real = engine.submit
    monkeypatch.setattr(engine, "submit", lambda *a, **k: reqs.append(real(*a, **k)) or reqs[-1])
    with running(create_app(models, ServeConfig(), ui=True)) as url:
        page = open_page(url, browser)
        assert not page.locator("#baize-model").is_visible()  # one model: no picker
        send(page, "Hello there")
        wait_text(page, r"\S")
        page.click("#baize-stop")
        deadline = time.monotonic() + 20
        while reqs[0].finish is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reqs[0].finish == "cancelled" and len(reqs[0].tokens) < 500
        page.context.close()
