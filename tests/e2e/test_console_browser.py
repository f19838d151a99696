"""The web console in a real browser (headless Chromium through Selenium) against the
real daemon: the playground runs programs and shows their verdicts and output as text,
the status page follows the queue, and a server with tokens refuses the console until
it is given one. Every wait is explicit (WebDriverWait on what the page shows).

Needs Debian's `chromium` and `chromium-driver` (`make deps` installs them): without
them these tests skip, or fail under SANDBOXD_MUST_WORK=1 as in CI.
The hello-world and burst tests save screenshots; with SANDBOXD_UPDATE_SCREENSHOT=1 they
become docs/console.png and docs/console-status.png (the README's)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MUST_WORK, require_kernel
from tests.e2e.conftest import Daemon, start_daemon, stop_daemon

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"
DOCS = Path(__file__).resolve().parents[2] / "docs"
FINAL = ("Accepted", "Wrong Answer", "Compile Error", "Runtime Error", "Time Limit Exceeded",
         "Memory Limit Exceeded", "Output Limit Exceeded", "Internal Error", "Refused",
         "Request failed", "Token needed")
WAIT_S = 60

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    if MUST_WORK:  # CI: a missing Selenium is a failure, not a skip
        raise
    pytest.skip("selenium is not installed (make deps)", allow_module_level=True)


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing (Debian packages chromium chromium-driver)"
    if MUST_WORK:
        pytest.fail(f"SANDBOXD_MUST_WORK=1 but the browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    require_kernel()
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900",
                # Nothing but loopback is reachable: the console must need no network.
                "--proxy-server=127.0.0.1:9",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def small_daemon(tmp_path_factory) -> Iterator[Daemon]:
    """One worker (so a burst queues) and a token."""
    require_kernel()
    d = start_daemon(tmp_path_factory.mktemp("console-browser"),
                     config_text='[sandbox]\nstate_dir = "/run/sandboxd-test"\n'
                                 f'[server]\nworkers = 1\n[auth]\ntokens = ["{TOKEN}"]\n',
                     languages=["python3"])
    try:
        yield d
    finally:
        stop_daemon(d)


def wait(driver, condition, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout).until(condition)


def open_console(driver, url: str) -> None:
    driver.get(url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(url + "/")


def wait_ready(driver) -> None:
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))


def set_field(driver, element_id: str, text: str) -> None:
    # The value as a whole: typing would go through the editor's Tab handling.
    driver.execute_script("arguments[0].value = arguments[1]",
                          driver.find_element(By.ID, element_id), text)


def run_program(driver, language: str, source: str, stdin: str = "",
                with_keyboard: bool = False) -> str:
    Select(driver.find_element(By.ID, "language")).select_by_value(language)
    set_field(driver, "source", source)
    set_field(driver, "stdin", stdin)
    set_field(driver, "expected", "")
    if with_keyboard:
        driver.find_element(By.ID, "source").send_keys(Keys.CONTROL, Keys.ENTER)
    else:
        driver.find_element(By.ID, "run").click()
    return wait(driver, lambda d: (t := d.find_element(By.ID, "verdict").text).startswith(FINAL)
                and d.find_element(By.ID, "run").is_enabled() and t)


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).get_attribute("textContent")


def save_screenshot(driver, tmp_path: Path, name: str) -> None:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    if os.environ.get("SANDBOXD_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS / name)


def test_hello_world_in_python_is_accepted(browser, daemon, tmp_path):
    open_console(browser, daemon.url)
    wait_ready(browser)
    options = [o.text for o in Select(browser.find_element(By.ID, "language")).options]
    assert any(o.startswith("Python 3") for o in options), options
    verdict = run_program(browser, "python3", 'print("Hello, console!")\n')
    assert verdict == "Accepted"
    assert text_of(browser, "stdout") == "Hello, console!\n"
    assert text_of(browser, "exit-code") == "0"
    assert text_of(browser, "time").endswith(" ms")
    assert text_of(browser, "memory").endswith(" KiB")
    assert "Accepted" in text_of(browser, "history")
    browser.find_element(By.ID, "copy-curl").click()
    curl = wait(browser, lambda d: text_of(d, "curl"))
    assert curl.startswith(f"curl -sS -X POST '{daemon.url}/execute?wait=true'")
    assert '\\"language\\":\\"python3\\"' not in curl and '"language":"python3"' in curl
    # Everything loaded from the daemon; no request failed, no policy was violated.
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    save_screenshot(browser, tmp_path, "console.png")


def test_tab_indents_the_source_instead_of_leaving_it(browser, daemon):
    open_console(browser, daemon.url)
    wait_ready(browser)
    source = browser.find_element(By.ID, "source")
    set_field(browser, "source", "")
    source.send_keys("if True:", Keys.ENTER, Keys.TAB, "pass")
    assert source.get_attribute("value") == "if True:\n    pass"
    assert browser.switch_to.active_element == source


def test_compile_error_in_c_shows_the_compilers_message(browser, daemon):
    open_console(browser, daemon.url)
    wait_ready(browser)
    verdict = run_program(browser, "c", "int main(void) { return missing_name; }\n")
    assert verdict == "Compile Error"
    assert "missing_name" in text_of(browser, "compile-output")


def test_infinite_loop_is_time_limit_exceeded(browser, daemon):
    open_console(browser, daemon.url)
    wait_ready(browser)
    set_field(browser, "time-limit", "500")
    verdict = run_program(browser, "python3", "while True:\n    pass\n", with_keyboard=True)
    assert verdict == "Time Limit Exceeded"


def test_output_is_shown_as_text_and_runs_no_script(browser, daemon):
    payload = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    open_console(browser, daemon.url)
    wait_ready(browser)
    verdict = run_program(browser, "python3", f"print({payload!r})\n")
    assert verdict == "Accepted"
    assert text_of(browser, "stdout") == payload + "\n"
    assert browser.find_elements(By.CSS_SELECTOR, "#stdout *") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018


def test_tests_mode_runs_several_tests_and_lists_their_verdicts(browser, daemon):
    open_console(browser, daemon.url)
    wait_ready(browser)
    Select(browser.find_element(By.ID, "language")).select_by_value("python3")
    set_field(browser, "source", "print(int(input())*2)\n")
    browser.find_element(By.ID, "tests-mode").click()
    assert not browser.find_element(By.ID, "stdin").is_displayed()
    browser.find_element(By.ID, "add-test").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#test-rows .test-row")
    assert len(rows) == 2
    for row, (stdin, expected) in zip(rows, [("2", "4"), ("3", "7")], strict=True):
        browser.execute_script("arguments[0].value = arguments[1]",
                               row.find_element(By.CSS_SELECTOR, ".test-stdin"), stdin)
        browser.execute_script("arguments[0].value = arguments[1]",
                               row.find_element(By.CSS_SELECTOR, ".test-expected"), expected)
    browser.find_element(By.ID, "copy-curl").click()
    curl = wait(browser, lambda d: text_of(d, "curl"))
    assert ('"tests":[{"stdin":"2","expected_output":"4"},{"stdin":"3","expected_output":"7"}]'
            in curl), curl
    assert '"stdin":""' not in curl
    browser.find_element(By.ID, "run").click()
    verdict = wait(browser, lambda d: (t := d.find_element(By.ID, "verdict").text).startswith(FINAL)
                   and d.find_element(By.ID, "run").is_enabled() and t)
    assert verdict == "Wrong Answer"
    results = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#test-results tbody tr"))
    cells = [[c.get_attribute("textContent") for c in r.find_elements(By.TAG_NAME, "td")]
             for r in results]
    assert [c[:2] for c in cells] == [["1", "Accepted"], ["2", "Wrong Answer"]], cells
    assert all(c[2].endswith(" ms") and c[4].endswith(" KiB") for c in cells), cells
    badges = browser.find_elements(By.CSS_SELECTOR, "#test-results .test-verdict")
    assert [b.get_attribute("class") for b in badges] == [
        "test-verdict v-accepted", "test-verdict v-wrong-answer"]
    assert text_of(browser, "stdout") == "6\n"


def test_console_without_a_token_is_refused_and_with_it_works(browser, small_daemon):
    open_console(browser, small_daemon.url)
    panel = wait(browser, lambda d: (p := d.find_element(By.ID, "token-panel")).is_displayed()
                 and p)
    assert panel.is_displayed()
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") is None
    browser.find_element(By.ID, "token-input").send_keys("not-the-token-0123456789")
    browser.find_element(By.ID, "token-save").click()
    wait(browser, lambda d: "invalid token" in text_of(d, "token-error"))
    browser.find_element(By.ID, "token-input").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    wait_ready(browser)
    assert not browser.find_element(By.ID, "token-panel").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('sandboxd-token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    assert run_program(browser, "python3", "print(6 * 7)\n") == "Accepted"
    assert text_of(browser, "stdout") == "42\n"


def test_status_page_follows_a_burst_of_slow_jobs(browser, small_daemon, tmp_path):
    """One worker, five jobs of about 2 s each: the queue stays non-empty for ~8 s,
    seen by a page that refreshes every 2 s; then it drains back to 0."""
    open_console(browser, small_daemon.url)
    browser.execute_script("sessionStorage.setItem('sandboxd-token', arguments[0])", TOKEN)
    browser.get(small_daemon.url + "/#status")
    browser.refresh()  # a change of the fragment alone does not load the page again
    wait(browser, lambda d: text_of(d, "queue-depth") == "0")
    assert text_of(browser, "cgroup") in ("v1", "v2")
    assert text_of(browser, "kernel") == os.uname().release
    assert "Python 3" in text_of(browser, "status-languages")
    ids = []
    for _ in range(5):
        status, body, _ = small_daemon.request(
            "POST", "/execute", {"language": "python3", "source": "import time\ntime.sleep(2)\n"},
            headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 202, body
        ids.append(body["submission_id"])
    wait(browser, lambda d: int(text_of(d, "queue-depth")) > 0)
    wait(browser, lambda d: text_of(d, "running") == "1")
    wait(browser, lambda d: text_of(d, "queue-depth") == "0" and text_of(d, "running") == "0")
    wait(browser, lambda d: "Accepted: " in text_of(d, "verdict-legend"))
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-queue polyline")
    assert text_of(browser, "p50") != "–"
    save_screenshot(browser, tmp_path, "console-status.png")


# The guessing game of docs/API.md: a secret from 1 to 100 (the test's input), seven
# guesses, answered with higher, lower or correct; the interactor's stderr is its message.
GUESSER = ("low, high = 1, 100\nwhile True:\n    guess = (low + high) // 2\n"
           "    print(guess, flush=True)\n    answer = input()\n    if answer == 'correct':\n"
           "        break\n    if answer == 'higher':\n        low = guess + 1\n    else:\n"
           "        high = guess - 1\n")
GAME = ("import sys\nsecret = int(open(sys.argv[1]).read())\nfor guesses in range(1, 8):\n"
        "    guess = int(input())\n    if guess == secret:\n        print('correct', flush=True)\n"
        "        print('found in', guesses, 'guesses', file=sys.stderr)\n        sys.exit(0)\n"
        "    print('higher' if guess < secret else 'lower', flush=True)\n"
        "print('too many guesses', file=sys.stderr)\nsys.exit(1)\n")


def choose_judge(driver, mode: str, language: str = "", source: str = "") -> None:
    Select(driver.find_element(By.ID, "judge-mode")).select_by_value(mode)
    for role in ("checker", "interactor"):
        assert driver.find_element(By.ID, f"{role}-io").is_displayed() is (role == mode)
    if mode != "output":
        Select(driver.find_element(By.ID, f"{mode}-language")).select_by_value(language)
        set_field(driver, f"{mode}-source", source)


def run_and_wait(driver) -> str:
    driver.find_element(By.ID, "run").click()
    return wait(driver, lambda d: (t := d.find_element(By.ID, "verdict").text).startswith(FINAL)
                and d.find_element(By.ID, "run").is_enabled() and t)


def test_an_interactive_game_shows_each_verdict_and_the_interactors_message(browser, daemon):
    open_console(browser, daemon.url)
    wait_ready(browser)
    Select(browser.find_element(By.ID, "language")).select_by_value("python3")
    set_field(browser, "source", GUESSER)
    # A checker written first, then the interactor chosen: only the interactor is sent.
    choose_judge(browser, "checker", "python3", "import sys\nsys.exit(0)\n")
    choose_judge(browser, "interactor", "python3", GAME)
    browser.find_element(By.ID, "tests-mode").click()
    browser.find_element(By.ID, "add-test").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#test-rows .test-row")
    for row, secret in zip(rows, ["42", "101"], strict=True):  # 101: never found
        browser.execute_script("arguments[0].value = arguments[1]",
                               row.find_element(By.CSS_SELECTOR, ".test-stdin"), secret)
    browser.find_element(By.ID, "copy-curl").click()
    curl = wait(browser, lambda d: text_of(d, "curl"))
    assert '"interactor_language":"python3"' in curl and '"interactor_source":' in curl
    assert '"checker' not in curl, curl
    assert run_and_wait(browser) == "Wrong Answer"
    results = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#test-results tbody tr"))
    cells = [[c.get_attribute("textContent") for c in r.find_elements(By.TAG_NAME, "td")]
             for r in results]
    assert [(c[1], c[5]) for c in cells] == [("Accepted", "found in 7 guesses\n"),
                                             ("Wrong Answer", "too many guesses\n")], cells
    # The overall verdict is the second test's, with its interactor's message.
    assert browser.find_element(By.ID, "interactor-message-box").is_displayed()
    assert text_of(browser, "interactor-message") == "too many guesses\n"
    assert not browser.find_element(By.ID, "checker-message-box").is_displayed()

    # One run, no tests: the message of the one interaction.
    browser.find_element(By.ID, "tests-mode").click()
    set_field(browser, "stdin", "64")
    set_field(browser, "expected", "")
    assert run_and_wait(browser) == "Accepted"
    assert text_of(browser, "interactor-message") == "found in 7 guesses\n"
    # Back from the history, the run's fields come back with it, the interactor's too.
    choose_judge(browser, "output")
    browser.find_elements(By.CSS_SELECTOR, "#history li")[1].click()
    assert Select(browser.find_element(By.ID, "judge-mode")).first_selected_option.text == (
        "Interactor")
    assert browser.find_element(By.ID, "interactor-source").get_attribute("value") == GAME
    assert text_of(browser, "interactor-message") == "too many guesses\n"
    # No error in this page (the log holds the earlier tests' too: another daemon's 401).
    severe = [e for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and daemon.url in e["message"]]
    assert not severe, severe


def test_a_custom_checker_decides_and_its_message_is_shown(browser, daemon):
    checker = ("import sys\nn = int(open(sys.argv[1]).read())\n"
               "a, b = map(int, open(sys.argv[2]).read().split())\n"
               "print('product', a * b)\nsys.exit(0 if a * b == n else 1)\n")
    open_console(browser, daemon.url)
    wait_ready(browser)
    choose_judge(browser, "checker", "python3", checker)
    assert run_program(browser, "python3", "n = int(input())\nprint(2, n // 2)\n",
                       stdin="42") == "Accepted"
    assert text_of(browser, "checker-message") == "product 42\n"
    assert not browser.find_element(By.ID, "interactor-message-box").is_displayed()
    assert run_program(browser, "python3", "n = int(input())\nprint(2, n // 2)\n",
                       stdin="43") == "Wrong Answer"
    assert text_of(browser, "checker-message") == "product 42\n"
