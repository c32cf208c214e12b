"""Log lines: UTC timestamps (labelled ``Z``, so they must be UTC) and the ids of the trace they belong to."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime

from opentelemetry.sdk.trace import TracerProvider

from nftpulse.core.logs import JsonFormatter


def _line(record: logging.LogRecord) -> dict[str, object]:
    return json.loads(JsonFormatter().format(record))  # type: ignore[no-any-return]


def test_timestamps_are_utc_whatever_the_local_zone() -> None:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        record = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "name": "t"})
        stamp = datetime.strptime(str(_line(record)["ts"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs((stamp - datetime.fromtimestamp(record.created, UTC)).total_seconds()) < 1
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_lines_carry_the_trace_they_were_logged_in() -> None:
    tracer = TracerProvider().get_tracer("test")
    record = logging.makeLogRecord({"msg": "outside", "levelname": "INFO", "name": "t"})
    assert "trace_id" not in _line(record)
    with tracer.start_as_current_span("work") as span:
        line = _line(logging.makeLogRecord({"msg": "inside", "levelname": "INFO", "name": "t"}))
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
