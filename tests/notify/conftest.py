"""Local receivers for the notification tests: every server binds 127.0.0.1 and stops with the test."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import local_http_server


@dataclass
class Recorded:
    """One request the receiver saw."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[Recorded], tuple[int, dict[str, str], bytes]]


@dataclass
class Receiver:
    """A scripted HTTP server: ``respond`` decides each answer, ``requests`` keeps what arrived."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    respond: Responder = lambda _req: (200, {"content-type": "application/json"}, b"{}")


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            receiver.requests.append(rec)
            status, headers, payload = receiver.respond(rec)
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (timeout tests): nothing left to answer.
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A fresh local HTTP receiver per test."""
    rec = Receiver(url="")
    with local_http_server(_handler(rec)) as url:
        rec.url = url
        yield rec


SPECS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "specs"


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    """``../shared/specs`` relative to the repository; tests that need it skip when it is absent."""
    if not SPECS_DIR.is_dir():
        pytest.skip(f"provider OpenAPI files not found at {SPECS_DIR} (see design §6)")
    return SPECS_DIR
