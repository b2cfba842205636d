"""A real OpenID Connect provider for the single sign-on tests: ``oidc-provider-mock`` (Authlib's
server) on 127.0.0.1 in a thread. ``mode`` turns the ID tokens it issues into forged ones (claims
changed, signature kept) or expired ones (properly signed, ``exp`` in the past); every token it
issued is kept in ``issued`` so tests can check that none leaks anywhere."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

import flask
import oidc_provider_mock
import werkzeug.serving
from joserfc import jwt
from joserfc.jwk import RSAKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MockProvider:
    def __init__(self, users: dict[str, dict[str, Any]]) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.mode = "honest"
        self.issued: list[str] = []
        app = oidc_provider_mock.app(user_claims=[oidc_provider_mock.User(sub=s, claims=c) for s, c in users.items()])
        app.after_request(self._tamper)
        self.server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> MockProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(5)
        self.server.server_close()

    def set_claims(self, subject: str, claims: dict[str, Any]) -> None:
        """Change a user's claims at the provider (its own ``PUT /users/<sub>``)."""
        import urllib.request

        request = urllib.request.Request(f"{self.issuer}/users/{subject}", data=json.dumps(claims).encode(),
                                         method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - our own 127.0.0.1 server
            assert answer.status == 204

    def _tamper(self, response: flask.Response) -> flask.Response:
        if flask.request.path != "/oauth2/token" or response.status_code != 200:
            return response
        body = response.get_json()
        self.issued += [body[k] for k in ("id_token", "access_token", "refresh_token") if body.get(k)]
        if self.mode == "honest":
            return response
        header, payload, signature = body["id_token"].split(".")
        claims = json.loads(_unb64(payload))
        if self.mode == "forged":  # a promotion the provider never signed
            claims["groups"] = ["it-admins"]
            body["id_token"] = ".".join([header, _b64(json.dumps(claims).encode()), signature])
        else:  # expired: signed by the provider's own key, but ten minutes past its exp
            now = int(time.time())
            claims.update(iat=now - 4200, auth_time=now - 4200, exp=now - 600)
            key = RSAKey.import_key(flask.g.oidc_provider_mock_storage.jwk.as_dict(is_private=True))
            body["id_token"] = jwt.encode(json.loads(_unb64(header)), claims, key)
        self.issued.append(body["id_token"])
        response.set_data(json.dumps(body))
        return response
