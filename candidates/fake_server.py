"""A tiny OpenAI-compatible Chat Completions server on 127.0.0.1 for tests and benchmarks.

It stands in for OpenAI's cloud only: replies are canned, every request is logged, and a *plan*
scripts faults per prompt (429 with Retry-After, 5xx, slow replies, malformed JSON, dropped
connections, empty replies). Real local models are served with ``python -m llama_cpp.server``.

>>> with FakeOpenAIServer() as server:
...     server.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Actions: ("ok",), ("status", code, {headers}), ("sleep", seconds), ("raw", body), ("drop",), ("empty",),
# ("text", content): a well-formed completion whose message is ``content`` (e.g. a judge's malformed verdict)
Action = tuple


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Call:
    at: float
    path: str
    user: str
    action: str
    authorization: str | None
    body: dict[str, Any] = field(default_factory=dict)


def canned_reply(user: str, seed: Any, model: str) -> str:
    """>>> canned_reply("I feel low", 3, "m")
    'That sounds hard. You said: "I feel low" (m, seed 3).'
    """
    return f'That sounds hard. You said: "{user[:60]}" ({model}, seed {seed}).'


class FakeOpenAIServer:
    """``with FakeOpenAIServer(delay=0.1, plan={"exam": [("status", 500, {})]}) as s: s.url``"""

    def __init__(self, *, delay: float = 0.0, plan: dict[str, list[Action]] | None = None,
                 port: int | None = None) -> None:
        self.delay = delay
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def next_action(self, user: str) -> Action:
        with self.lock:
            for key, actions in self.plan.items():
                if key in user and actions:
                    return actions.pop(0)
        return ("ok",)

    def calls_for(self, text: str) -> list[Call]:
        return [c for c in self.calls if text in c.user]

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self.send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                messages = body.get("messages") or []
                user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
                action = server.next_action(user)
                with server.lock:
                    server.calls.append(Call(time.time(), self.path, user, action[0],
                                             self.headers.get("Authorization"), body))
                try:
                    self.act(action, body, user)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def act(self, action: Action, body: dict[str, Any], user: str) -> None:
                kind = action[0]
                if kind == "status":
                    code, headers = action[1], (action[2] if len(action) > 2 else {})
                    self.send_json(code, {"error": {"message": f"fake error {code}", "type": "fake"}}, headers)
                    return
                if kind == "raw":
                    self.send_json(200, action[1].encode())
                    return
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                time.sleep(action[1] if kind == "sleep" else server.delay)
                model = body.get("model", "fake")
                text = "" if kind == "empty" else action[1] if kind == "text" else \
                    canned_reply(user, body.get("seed"), model)
                words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
                self.send_json(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": words, "completion_tokens": len(text.split()),
                              "total_tokens": words + len(text.split())},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - used by tests that need a server in another process
    import argparse

    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible endpoint (tests/benchmarks only).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeOpenAIServer(delay=args.delay, port=args.port).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
