"""The chat page (jaxllm/serve/page.html) in headless Chromium, against `python -m jaxllm.serve` started as users
start it: streamed replies equal the API's whole greedy ones, each request carries the whole conversation and the
settings, Stop keeps the partial reply, and a refused request shows the server's error and leaves the history.

Not here: the API itself (tests/test_serve.py, against the openai client)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # this machine is offline: Chromium's own background connections would be refused and slow it down
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# Records every request the page makes (after the page has loaded): [{url, headers, body}], read by the tests.
RECORD_FETCH = """
window.sent = [];
const original = window.fetch;
window.fetch = (url, options = {}) => {
  const body = options.body ? JSON.parse(options.body) : null;
  window.sent.push({url: String(url), headers: options.headers || {}, body});
  return original(url, options);
};
"""
# Clicks Stop as soon as the reply's first text is on the page (in the same task: before more of the stream is read).
STOP_AT_FIRST_TEXT = """
const log = document.getElementById("log");
new MutationObserver((_, observer) => {
  if (log.querySelector(".msg.assistant")?.textContent) {
    document.getElementById("stop").click();
    observer.disconnect();
  }
}).observe(log, {subtree: true, childList: true, characterData: true});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def whole_reply(url: str, model: str, messages: list[dict], **settings) -> str:
    """The API's reply to the page's request, asked for whole (stream false) with urllib."""
    body = json.dumps({"model": model, "messages": messages, "temperature": 0, **settings}).encode()
    request = urllib.request.Request(url + "v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


def wait_until_ready(process: subprocess.Popen, log, url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"python -m jaxllm.serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"python -m jaxllm.serve did not answer {url}health within {timeout:.0f} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tiny_lineage, tmp_path_factory):
    """{'url', 'model'} of `python -m jaxllm.serve` serving the tiny SFT run, in its own process."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "jaxllm.serve", f"--run_dir={tiny_lineage['root'] / 'sft'}"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--host=127.0.0.1", f"--port={port}", "--slots=2"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until_ready(process, log, url)
        assert url in log.read_text()  # the line that tells the user where to point the browser
        yield {"url": url, "model": get(url + "v1/models")["data"][0]["id"]}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(server, tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver: .ci/run installs them) on the chat page, its
    requests recorded in window.sent."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("the chat page's test needs Chromium: apt-get install chromium chromium-driver (as .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        browser.get(server["url"])
        wait(browser).until(lambda b: value(b, "model") == server["model"])  # GET /v1/models filled the choice
        browser.execute_script(RECORD_FETCH)
        yield browser
    finally:
        browser.quit()


def wait(browser) -> WebDriverWait:
    return WebDriverWait(browser, 60, poll_frequency=0.05)


def value(browser, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).get_property("value")


def fill(browser, **values: str) -> None:
    """Sets inputs as a user would leave them (a change event follows, as on leaving the field)."""
    for element_id, text in values.items():
        box = browser.find_element(By.ID, element_id)
        box.clear()
        box.send_keys(text)
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)


def messages(browser) -> list[tuple[str, str]]:
    """The conversation on the page: (role, exact text) per bubble."""
    return [
        (e.get_attribute("class").split()[1], e.get_property("textContent"))
        for e in browser.find_elements(By.CSS_SELECTOR, "#log .msg")
    ]


def status(browser) -> str:
    return browser.find_element(By.ID, "status").text


def idle(browser) -> bool:
    """Fails at once on an error: the turn would never finish."""
    text = status(browser)
    if text.startswith("error"):
        pytest.fail(f"the page shows {text!r}")
    return text == "idle"


def sent(browser) -> list[dict]:
    return [r for r in browser.execute_script("return window.sent") if r["url"].endswith("/v1/chat/completions")]


def finish_turn(browser, replies: int) -> None:
    """Waits for the page to show `replies` replies and be idle again (send() leaves idle at once, not later)."""
    try:
        wait(browser).until(lambda b: sum(role == "assistant" for role, _ in messages(b)) == replies and idle(b))
    except TimeoutException:
        pytest.fail(f"waiting for {replies} replies, the page shows {messages(browser)}, status {status(browser)!r}")


def test_the_page_streams_replies_and_sends_the_whole_conversation(server, page):
    fill(page, temperature="0", max_tokens="4")  # 4 tokens a reply: two turns fit the tiny model's 32 tokens
    page.find_element(By.ID, "message").send_keys("1 plus", Keys.SHIFT, Keys.ENTER, Keys.NULL, "2?", Keys.ENTER)
    finish_turn(page, 1)
    first = {"role": "user", "content": "1 plus\n2?"}  # Shift+Enter is a new line, Enter sends
    settings = {"model": server["model"], "stream": True, "temperature": 0, "top_p": 1, "max_tokens": 4}
    assert [r["body"] for r in sent(page)] == [{**settings, "messages": [first]}]
    reply = whole_reply(server["url"], server["model"], [first], max_tokens=4)
    assert messages(page) == [("user", first["content"]), ("assistant", reply)]

    page.find_element(By.ID, "message").send_keys("3 plus 4?")
    page.find_element(By.ID, "send").click()
    finish_turn(page, 2)
    conversation = [first, {"role": "assistant", "content": reply}, {"role": "user", "content": "3 plus 4?"}]
    assert sent(page)[-1]["body"] == {**settings, "messages": conversation}
    second = whole_reply(server["url"], server["model"], conversation, max_tokens=4)
    assert messages(page) == [
        ("user", first["content"]),
        ("assistant", reply),
        ("user", "3 plus 4?"),
        ("assistant", second),
    ]
    assert reply + second  # text came through the stream, not only empty turns

    page.find_element(By.ID, "reset").click()
    assert messages(page) == [] and status(page) == "idle"


def test_stop_keeps_the_partial_reply_and_the_server_serves_on(server, page):
    # 12 of the 20 tokens the 32-token context leaves after this prompt (12 tokens): long enough to stop midway,
    # short enough that the partial reply and the next turn still fit
    fill(page, temperature="0", max_tokens="12")
    whole = whole_reply(server["url"], server["model"], [{"role": "user", "content": "5 plus 6?"}], max_tokens=12)
    page.execute_script(STOP_AT_FIRST_TEXT)
    page.find_element(By.ID, "message").send_keys("5 plus 6?", Keys.ENTER)
    finish_turn(page, 1)
    (_, question), (_, partial) = messages(page)
    assert partial and whole.startswith(partial)
    stopped = "stopped" in page.find_element(By.CSS_SELECTOR, ".msg.assistant").get_attribute("class")
    assert stopped or partial == whole  # the reply was cut, unless all of it arrived with its first piece
    deadline = time.time() + 20  # the server notices the client left and frees its slot
    while get(server["url"] + "health")["busy"] and time.time() < deadline:
        time.sleep(0.05)
    assert get(server["url"] + "health")["busy"] == 0

    fill(page, max_tokens="1")  # the next turn carries the partial reply
    page.find_element(By.ID, "message").send_keys("ok", Keys.ENTER)
    finish_turn(page, 2)
    assert sent(page)[-1]["body"]["messages"] == [
        {"role": "user", "content": question},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "ok"},
    ]


def test_a_refused_request_shows_the_error_and_leaves_the_history(server, page):
    fill(page, system="Be brief.", seed="7", api_key="secret", max_tokens="1000")  # more than the context holds
    page.find_element(By.ID, "message").send_keys("2 plus 2?", Keys.ENTER)
    wait(page).until(lambda b: status(b).startswith("error: "))
    assert "max_tokens=1000" in status(page)  # the server's own message
    assert messages(page) == [("user", "2 plus 2?")]  # shown, but out of the history
    request = sent(page)[-1]
    assert request["headers"]["Authorization"] == "Bearer secret"
    assert request["body"]["seed"] == 7
    assert request["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 plus 2?"},
    ]

    fill(page, max_tokens="2")
    page.find_element(By.ID, "message").send_keys("3 plus 3?", Keys.ENTER)
    finish_turn(page, 1)
    assert sent(page)[-1]["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "3 plus 3?"},
    ]
    page.refresh()  # the API key is kept in the browser (localStorage); the conversation is not
    wait(page).until(lambda b: value(b, "model") == server["model"])
    assert value(page, "api_key") == "secret" and messages(page) == []
