"""Helpers for the labeling-app tests (AppTest and browser); their databases come from
``tests.factories.make_database``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tests.pg import free_port

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "labeling_app" / "app.py"
OUTPUT = ROOT / "test-output" / "app"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def running_app(database_url: str, log_path: Path, *, sso: bool = False, env: dict[str, str] | None = None,
                process_out: list | None = None) -> Iterator[str]:
    """``streamlit run`` on 127.0.0.1 and a free port; yields its base URL; stops it afterwards
    (``sso``: the single sign-on entry, ``env`` naming its ``THERAPREF_CONFIG`` and client secret;
    ``process_out`` receives the process)."""
    from labeling_app.launch import app_url, start_app, stop_app, wait_until_ready

    port = free_port()
    process = start_app(database_url, port=port, log_path=log_path, sso=sso, env=env)
    if process_out is not None:
        process_out.append(process)
    try:
        wait_until_ready(app_url(port=port), 90, process=process)
        yield app_url(port=port)
    finally:
        stop_app(process)


def login(page, base_url: str, username: str, password: str, *, shown_as: str | None = None,
          timeout_ms: int = 60_000) -> None:
    """Open the labeling app in a browser page and log in through its form; wait until the app says
    "Signed in as" the user (``shown_as``: the display name it shows instead of the username)."""
    page.goto(base_url + "/")
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text(f"Signed in as {shown_as or username}").wait_for(timeout=timeout_ms)


def sso_login(page, base_url: str, subject: str, *, expect: str | None = None, timeout_ms: int = 60_000) -> None:
    """Sign in through the OIDC provider by keyboard only: Tab to "Sign in with SSO", Enter; at the
    provider's form (subject field focused) type ``subject``, Enter. Waits for ``expect`` on the app."""
    page.goto(base_url + "/")
    button = page.get_by_role("button", name="Sign in with SSO")
    button.wait_for(timeout=timeout_ms)
    for _ in range(30):
        if page.evaluate("document.activeElement && document.activeElement.innerText || ''").strip().endswith(
                "Sign in with SSO"):
            break
        page.keyboard.press("Tab")
    else:
        raise AssertionError("Tab never reached the SSO button")
    page.keyboard.press("Enter")
    page.wait_for_url("**/oauth2/authorize**", timeout=timeout_ms)
    page.wait_for_function("() => document.activeElement && document.activeElement.name === 'sub'",
                           timeout=timeout_ms)  # the provider's form focuses its subject field itself
    page.keyboard.type(subject)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: url.startswith(base_url), timeout=timeout_ms)
    if expect:
        page.get_by_text(expect).first.wait_for(timeout=timeout_ms)


def app_login(at: AppTest, username: str, password: str) -> AppTest:
    """The same through streamlit.testing: type into the login form, submit, rerun."""
    at.text_input(key="login_username").input(username)
    at.text_input(key="login_password").input(password)
    return at.button(key="login_submit").click().run()


SCREEN_JS = """() => {
  for (const el of document.querySelectorAll('[class*="st-key-choice-left-"]')) {
    for (const cls of el.classList) {
      if (cls.startsWith('st-key-choice-left-')) { return cls.slice('st-key-choice-left-'.length); }
    }
  }
  return null;
}"""


def wait_for_keys(page, name: str, timeout: float = 60_000) -> None:
    """Wait until the page ``name``'s keyboard listener is installed (labeling_app/keyboard.py). Its
    script comes after the widgets, so on a loaded machine a pair can be on screen a while before a
    key would do anything."""
    page.wait_for_function(f"() => window.__therapref_keys_{name} === true", timeout=timeout)


def current_screen(page, timeout: float = 60_000) -> str:
    """The opaque id of the pair on screen, as its widget keys carry it (waits until a pair is shown
    and the compare page's keys work)."""
    page.wait_for_function(SCREEN_JS, timeout=timeout)
    wait_for_keys(page, "compare", timeout)
    return page.evaluate(SCREEN_JS)


STRENGTH_JS = """([widget, index]) => {
  const radios = document.querySelectorAll('.st-key-' + widget + ' input[type="radio"]');
  return radios.length === 3 && radios[index].checked;
}"""


def press_strength(page, key: str, widget: str, timeout: float = 30_000) -> None:
    """Press a strength key (q / w / e) and wait until the strength radio with widget key ``widget``
    shows that option checked (a radio click reruns nothing, but the next key must not overtake it)."""
    page.keyboard.press(key)
    page.wait_for_function(STRENGTH_JS, arg=[widget, "qwe".index(key)], timeout=timeout)


def wait_for_new_pair(page, old_screen: str, timeout: float = 60_000) -> str | None:
    """Wait until the pair on screen changed (or the queue is done); return the new screen id or None."""
    page.wait_for_function(
        "(old) => { const t = (" + SCREEN_JS + ")(); return (t !== null && t !== old) || "
        "document.body.innerText.includes('All done'); }", arg=old_screen, timeout=timeout)
    return page.evaluate(SCREEN_JS)


def app_serving(port: int) -> bool:
    """True while an app answers its health check on 127.0.0.1:``port``."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
            return True
    except OSError:
        return False


def judge_left_in_app(at: AppTest, count: int, *, strength: int = 2) -> None:
    """A logged-in ``AppTest`` clinician prefers the left reply, ``count`` times, through the compare page's
    own buttons (the queue decides which pairs come; priority first)."""
    for _ in range(count):
        keys = [b.key for b in at.button if b.key and b.key.startswith("choice-left-")]
        assert keys, [t.value for t in at.title]
        screen = keys[0].removeprefix("choice-left-")
        at.radio(key=f"strength-{screen}").set_value(strength)
        at.button(key=f"choice-left-{screen}").click().run()
        assert not at.exception


def signed_in_app(annotator, script: Path = APP, *, timeout: float = 60) -> AppTest:
    """An AppTest of ``script`` (the router by default, or one page run directly) with ``annotator``
    already signed in (the session's user, as the login page leaves it); not yet run."""
    from streamlit.testing.v1 import AppTest

    from labeling_app.state import USER_KEY, User

    at = AppTest.from_file(str(script), default_timeout=timeout)
    at.session_state[USER_KEY] = User(annotator.id, annotator.username, annotator.display_name, annotator.role)
    return at
