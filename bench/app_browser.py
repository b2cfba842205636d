"""The judging screen as clinicians meet it: real Chromium pages against the real app server.

For each database (SQLite with one app process; PostgreSQL with two app processes, clinicians
spread over them as a load balancer with sticky sessions would) and each number of concurrent
clinicians, every clinician logs in (untimed), then judges ``--judgments`` pairs by keyboard: a
think time (uniform between half and 1.5 times ``--think-ms``), then either ``3`` (tie) or a
strength key and ``1``/``2``. Timed: the submitting key press → the next pair drawn, measured in
the page's own clock (``keydown`` listener → the first animation frame on which the new pair's
controls are in the page and not stale), so Playwright's own round trips do not count.

Afterwards the database is checked against what the clinicians saw:

- lost: a key press that moved to the next pair whose judgment is not stored;
- duplicated: more judgments stored for a clinician than presses that moved on, or a comparison
  filled beyond its overlap;
- errors: a press after which no next pair appeared within 30 s, an exception shown in the page,
  or a warning ("Moved on", "Nothing to undo").

One line per run::

    sqlite clinicians=5 judgments=60 lost=0 duplicated=0 errors=0 p50=…ms p95=…ms p99=…ms

Run: ``.venv/bin/python bench/app_browser.py`` (``--help``; about 5 minutes). Chromium, the app
servers and the database share this machine's cores, as in a small clinic's server; with 20
clinicians Chromium itself takes most of the CPU, so those figures are an upper bound of what a
clinician on their own computer waits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import PASSWORD_HASH_USER, LoadConfig, percentile, setup_database  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-renderer-backgrounding", "--disable-background-timer-throttling"]
PRESS_TIMEOUT_MS = 30_000

# Installed in every page: the time of each keydown, in the page's clock.
KEY_CLOCK_JS = """
document.addEventListener('keydown', () => { window.__pressedAt = performance.now(); }, true);
"""
# The opaque id of the pair on screen (from its widget keys), or null.
SCREEN_JS = """() => {
  for (const el of document.querySelectorAll('[class*="st-key-choice-tie-"]')) {
    for (const cls of el.classList) {
      if (cls.startsWith('st-key-choice-tie-')) { return cls.slice('st-key-choice-tie-'.length); }
    }
  }
  return null;
}"""
# True on the first frame where a different pair's controls are drawn and live (or the queue is done).
DRAWN_JS = """(old) => {
  const done = document.body.innerText.includes('All done');
  let drawn = false;
  for (const el of document.querySelectorAll('[class*="st-key-choice-tie-"]')) {
    const fresh = ![...el.classList].includes('st-key-choice-tie-' + old);
    const button = el.querySelector('button');
    const stale = el.closest('[data-stale="true"]');
    if (fresh && button && !button.disabled && !stale) { drawn = true; }
  }
  if (drawn || done) { window.__drawnAt = performance.now(); return true; }
  return false;
}"""


@dataclass
class BrowserConfig:
    clinicians: str = field(default="1,5,20", metadata={"help": "comma list of concurrent clinicians"})
    judgments: int = field(default=12, metadata={"help": "timed judgments per clinician"})
    think_ms: float = field(default=2000.0, metadata={
        "help": "mean think time before each judgment (uniform 0.5x-1.5x); a clinician reading two replies takes "
                "20 s or more, so 2 s is ten times a real clinic's load"})
    databases: str = field(default="sqlite,postgresql", metadata={"help": "comma list: sqlite, postgresql"})
    clients: str = field(default="chromium,protocol", metadata={
        "help": "comma list: 'chromium' (real pages; key press -> pair drawn) and/or 'protocol' (Streamlit's websocket "
                "protocol; submit message -> the run's last message)"})
    chromium_max: int = field(default=5, metadata={
        "help": "largest number of clinicians driven as Chromium pages (beyond it Chromium, not the app, is what is "
                "measured on 2 cores)"})
    seed: int = field(default=11, metadata={"help": "random seed"})


@dataclass
class RunResult:
    database: str
    clinicians: int
    client: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    moved_on: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0

    def line(self) -> str:
        values = self.latencies_ms or [float("nan")]
        return (f"{self.database:<10} {self.client:<8} clinicians={self.clinicians} "
                f"judgments={len(self.latencies_ms)} lost={self.lost} duplicated={self.duplicated} "
                f"errors={len(self.errors)} p50={percentile(values, 50):.0f}ms "
                f"p95={percentile(values, 95):.0f}ms p99={percentile(values, 99):.0f}ms")


async def _login(page, base_url: str, username: str) -> None:
    await page.goto(base_url + "/")
    await page.get_by_role("textbox", name="Username").fill(username)
    await page.get_by_role("textbox", name="Password").fill(PASSWORD_HASH_USER)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_function(SCREEN_JS, timeout=120_000)
    # the page's keyboard script comes after the widgets: the first key must not land before it
    await page.wait_for_function("() => window.__therapref_keys_compare === true", timeout=120_000)


async def _clinician(browser, base_url: str, username: str, config: BrowserConfig, rng: random.Random,
                     result: RunResult, ready: _Gate) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.add_init_script(KEY_CLOCK_JS)
    moved_on, arrived = 0, False
    try:
        await _login(page, base_url, username)
        ready.arrived()
        arrived = True
        await ready.wait()
        for _ in range(config.judgments):
            await asyncio.sleep(rng.uniform(0.5, 1.5) * config.think_ms / 1000)
            old = await page.evaluate(SCREEN_JS)
            if old is None:
                break  # the queue is done
            await page.locator("h1").first.click()  # focus the page, not a text field
            if rng.random() < 0.5:
                await page.keyboard.press("3")
            else:
                await page.keyboard.press(rng.choice("qwe"))  # strength: inside the form, no rerun
                await page.keyboard.press(rng.choice("12"))
            try:
                await page.wait_for_function(DRAWN_JS, arg=old, polling="raf", timeout=PRESS_TIMEOUT_MS)
            except Exception as exc:  # noqa: BLE001 - a bench records, it does not stop
                alerts = await page.evaluate("""() => [...document.querySelectorAll('[data-testid="stAlert"]')]
                    .map(e => e.innerText).join(' | ')""")
                result.errors.append(f"{username}: no next pair after {PRESS_TIMEOUT_MS} ms ({type(exc).__name__}; "
                                     f"on screen: {alerts[:160] or 'no message'})")
                continue
            result.latencies_ms.append(await page.evaluate("window.__drawnAt - window.__pressedAt"))
            moved_on += 1
            problems = await page.evaluate("""() => [...document.querySelectorAll(
                '[data-testid="stException"], [data-testid="stAlertContentWarning"]')].map(e => e.innerText)""")
            if "Moved on" in await page.inner_text("body"):
                problems.append("Moved on (the pair was taken or expired)")
            result.errors.extend(f"{username}: {p[:120]}" for p in problems)
    except Exception as exc:  # noqa: BLE001
        result.errors.append(f"{username}: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        if not arrived:
            ready.arrived()
        result.moved_on[username] = moved_on
        await context.close()


class _ProtocolPage:
    """One clinician's browser tab, spoken as Streamlit's own websocket protocol (protobuf BackMsg /
    ForwardMsg over ``/_stcore/stream``): the messages a browser sends and receives, without the
    browser's rendering, so that 20+ clinicians fit on 2 cores beside the server.

    A run's widgets are remembered by their user key (``$$ID-<hash>-<key>``); a click is a
    ``rerun_script`` carrying the button's trigger (and the fragment it belongs to, as the browser
    sends it). "Drawn" here means the run's last message (``script_finished``) has arrived."""

    def __init__(self, websocket) -> None:  # noqa: ANN001
        self.websocket = websocket
        self.page_hash = ""
        self.widgets: dict[str, tuple[str, str]] = {}  # user key -> (widget id, fragment id)
        self.problems: list[str] = []

    async def run(self, states=(), fragment_id: str = "") -> None:  # noqa: ANN001
        from streamlit.proto.BackMsg_pb2 import BackMsg

        message = BackMsg()
        message.rerun_script.query_string = ""
        message.rerun_script.page_script_hash = self.page_hash
        message.rerun_script.fragment_id = fragment_id
        message.rerun_script.widget_states.widgets.extend(states)
        await self.websocket.send(message.SerializeToString())
        await self._read_until_finished()

    async def _read_until_finished(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        seen: dict[str, tuple[str, str]] = {}
        while True:
            forward = ForwardMsg()
            forward.ParseFromString(await asyncio.wait_for(self.websocket.recv(), PRESS_TIMEOUT_MS / 1000))
            kind = forward.WhichOneof("type")
            if kind == "new_session":
                self.page_hash = forward.new_session.page_script_hash
            elif kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
                element = forward.delta.new_element
                name = element.WhichOneof("type")
                widget = getattr(element, name)
                widget_id = getattr(widget, "id", "")
                if isinstance(widget_id, str) and widget_id.startswith("$$ID-"):
                    seen[widget_id.split("-", 2)[2]] = (widget_id, forward.delta.fragment_id)
                if name == "exception" or (name == "alert" and "Moved on" in element.alert.body):
                    self.problems.append(getattr(widget, "message", "") or element.alert.body)
            elif kind == "script_finished":
                if forward.script_finished == forward.FINISHED_EARLY_FOR_RERUN:
                    continue  # st.rerun(): the next run follows on its own
                self.widgets = seen
                return

    def screen(self) -> str | None:
        keys = [key for key in self.widgets if key.startswith("choice-tie-")]
        return keys[0].removeprefix("choice-tie-") if keys else None

    def state(self, key: str, **value):  # noqa: ANN003, ANN201
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        widget_id, _fragment = self.widgets[key]
        return WidgetState(id=widget_id, **value)


async def _protocol_clinician(base_url: str, username: str, config: BrowserConfig, rng: random.Random,
                              result: RunResult, ready: _Gate) -> None:
    import websockets

    moved_on, arrived = 0, False
    address = base_url.replace("http://", "ws://") + "/_stcore/stream"
    try:
        async with websockets.connect(address, subprotocols=["streamlit"], max_size=None) as websocket:
            page = _ProtocolPage(websocket)
            await page.run()
            await page.run([page.state("login_username", string_value=username),
                            page.state("login_password", string_value=PASSWORD_HASH_USER),
                            page.state("login_submit", trigger_value=True)])
            ready.arrived()
            arrived = True
            await ready.wait()
            for _ in range(config.judgments):
                await asyncio.sleep(rng.uniform(0.5, 1.5) * config.think_ms / 1000)
                screen = page.screen()
                if screen is None:
                    break
                if rng.random() < 0.5:
                    states = [page.state(f"choice-tie-{screen}", trigger_value=True)]
                else:
                    # A radio's state is its option's label (the compare page's strength scale).
                    strength = rng.choice(["Slightly better", "Clearly better", "Much better"])
                    states = [page.state(f"strength-{screen}", string_value=strength),
                              page.state(f"choice-{rng.choice(['left', 'right'])}-{screen}", trigger_value=True)]
                fragment = page.widgets[f"choice-tie-{screen}"][1]
                started = time.perf_counter()
                try:
                    await page.run(states, fragment_id=fragment)
                except TimeoutError:
                    result.errors.append(f"{username}: no next pair after {PRESS_TIMEOUT_MS} ms")
                    break
                if page.screen() == screen:
                    result.errors.append(f"{username}: the same pair is still on screen")
                    continue
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                moved_on += 1
            result.errors.extend(f"{username}: {p[:120]}" for p in page.problems)
    except Exception as exc:  # noqa: BLE001 - a bench records, it does not stop
        result.errors.append(f"{username}: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        if not arrived:
            ready.arrived()
        result.moved_on[username] = moved_on


async def _drive(base_urls: list[str], usernames: list[str], config: BrowserConfig, result: RunResult,
                 client: str) -> None:
    ready = _Gate(len(usernames))

    def clinicians(start):  # noqa: ANN001, ANN202 - one coroutine per clinician, spread over the app processes
        return asyncio.gather(*(start(base_urls[i % len(base_urls)], name, config,
                                      random.Random(config.seed * 1000 + i), result, ready)
                                for i, name in enumerate(usernames)))

    if client == "protocol":
        await clinicians(_protocol_clinician)
        return
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        async def in_chromium(*args):  # noqa: ANN002, ANN202
            await _clinician(browser, *args)

        await clinicians(in_chromium)
        await browser.close()


class _Gate:
    """Everyone logs in first (untimed); the judging starts when the last page is in (or failed)."""

    def __init__(self, count: int) -> None:
        self.left, self.event = count, asyncio.Event()

    def arrived(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


def _check_database(url: str, result: RunResult, usernames: list[str]) -> None:
    from sqlalchemy import func, select

    from db.engine import make_engine, session_scope
    from db.models import Annotator, Comparison, Judgment

    engine = make_engine(url)
    with session_scope(engine) as session:
        stored = dict(session.execute(select(Annotator.username, func.count(Judgment.id))
                                      .join(Judgment, Judgment.annotator_id == Annotator.id)
                                      .group_by(Annotator.username)).all())
        overfilled = session.execute(select(func.count(Comparison.id))
                                     .where(Comparison.judgments_count > Comparison.judgments_required)).scalar_one()
    engine.dispose()
    for name in usernames:
        expected, actual = result.moved_on.get(name, 0), stored.get(name, 0)
        result.lost += max(0, expected - actual)
        result.duplicated += max(0, actual - expected)
    result.duplicated += overfilled


def run(database: str, clinicians: int, client: str, config: BrowserConfig, folder: Path) -> RunResult:
    from labeling_app.launch import app_url, start_app, stop_app, wait_until_ready
    from tests.pg import PostgresServer, free_port

    server = PostgresServer().start() if database == "postgresql" else None
    processes = []
    try:
        name = f"browser-{client}-{clinicians}"
        url = server.create_database(name.replace("-", "_")) if server else f"sqlite:///{folder / f'{name}.db'}"
        load = LoadConfig(annotators=clinicians, judgments=config.judgments + 2, overlap=1)
        setup_database(url, load)
        usernames = [f"load{i:03d}" for i in range(clinicians)]
        base_urls = []
        for index in range(2 if server else 1):
            port = free_port()
            processes.append(start_app(url, port=port, log_path=folder / f"app-{database}-{name}-{index}.log"))
            base_urls.append(app_url(port=port))
        for process, base_url in zip(processes, base_urls, strict=True):
            wait_until_ready(base_url, 120, process=process)
        result = RunResult(database, clinicians, client)
        asyncio.run(_drive(base_urls, usernames, config, result, client))
        _check_database(url, result, usernames)
        return result
    finally:
        for process in processes:
            stop_app(process)
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, spec in BrowserConfig.__dataclass_fields__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(spec.default), default=spec.default,
                            help=spec.metadata.get("help"))
    args = parser.parse_args(argv)
    config = BrowserConfig(**{name: getattr(args, name) for name in BrowserConfig.__dataclass_fields__})
    print(f"# chromium: key press -> next pair drawn; protocol: submit message -> run finished; "
          f"{config.judgments} judgments per clinician, think time "
          f"{config.think_ms:.0f} ms mean; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="therapref-browser-") as tmp:
        for database in [d.strip() for d in config.databases.split(",") if d.strip()]:
            for clinicians in [int(n) for n in config.clinicians.split(",") if n.strip()]:
                for client in [c.strip() for c in config.clients.split(",") if c.strip()]:
                    if client == "chromium" and clinicians > config.chromium_max:
                        continue
                    started = time.monotonic()
                    result = run(database, clinicians, client, config, Path(tmp))
                    print(result.line() + f" ({time.monotonic() - started:.0f} s)", flush=True)
                    for sample in result.errors[:5]:
                        print(f"  error: {sample}", flush=True)
                    failed = failed or bool(result.errors or result.lost or result.duplicated)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
