"""Schemathesis over /openapi.json, in process against the ASGI app on a real SQLite database: requests
generated from every operation's schema (valid and invalid), with an admin key and with a user's key.
No answer may be a 5xx, and every documented answer must match its schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from nftpulse.api.app import create_app
from nftpulse.core.settings import Settings
from nftpulse.store import keys, schema
from nftpulse.store.cache import NoCache
from nftpulse.store.db import Database

#: Examples per operation and key: about 30 operations, 2 keys, 42 each (fewer where an operation's
#: inputs run out): at least 2,000 cases.
EXAMPLES = 42
MIN_CASES = 2000


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "pulse.db"
    db = Database(f"sqlite:///{path}")
    schema.upgrade(db)
    settings_ = Settings(
        database_url=db.url,
        twilio_auth_token="fuzz-token",
        sendgrid_webhook_public_key="not-a-key",
        allow_private_webhooks=False,
    )
    app: FastAPI = create_app(settings_, db, NoCache(), None)
    admin = keys.create(db, "admin", ["admin"])
    user = keys.create(db, "alice", ["user:alice"])
    yield {"app": app, "keys": {"admin": admin, "user": user}}
    db.dispose()


def _fuzz(target: dict[str, Any], key: str) -> int:
    """Every operation, ``EXAMPLES`` generated cases each; the failures of all operations are reported
    together. Returns the number of cases sent."""
    loaded = schemathesis.openapi.from_asgi("/openapi.json", target["app"])
    # The live stream holds its connection open for minutes by design; /readyz answers 503 without
    # Temporal, which is its job. Both are covered by their own tests.
    loaded = loaded.exclude(path_regex=r"/stream$").exclude(path="/readyz")
    sent = 0
    failures: list[str] = []
    for result in loaded.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: schemathesis.Case) -> None:
            nonlocal sent
            sent += 1
            response = case.call(headers={"Authorization": f"Bearer {key}"})
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    return sent


def test_fuzz_as_admin_and_as_a_user(fuzz_target: dict[str, Any]) -> None:
    sent = _fuzz(fuzz_target, fuzz_target["keys"]["admin"]) + _fuzz(fuzz_target, fuzz_target["keys"]["user"])
    print(f"{sent} generated cases")
    assert sent >= MIN_CASES, sent
