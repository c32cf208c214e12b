"""Benchmark: what retractions add to an ordinary batch, the lookup of the batch's ids.

    .venv/bin/python -m bench.retractions --events 1000 --repeat 200

Times ``store.retractions.retracted_among`` for one batch of ``--events`` ids in a collection that never
saw a retraction (one point read) and in one that has (the ids looked up), on SQLite in a temporary file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from nftpulse.store import retractions, schema
from nftpulse.store.db import Database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        schema.upgrade(db)
        refs = [("chain", f"ethereum:0x{i:064x}:0") for i in range(args.events)]
        with db.write() as session:
            named = [(ref, i) for i, ref in enumerate(refs[:10])]
            retractions.record(session, "collection:ethereum:0xbb", named, datetime.now(UTC))
        for label, partition in (
            ("never retracted", "collection:ethereum:0xaa"),
            ("some retracted", "collection:ethereum:0xbb"),
        ):
            with db.read() as session:
                started = time.perf_counter()
                for _ in range(args.repeat):
                    retractions.retracted_among(session, partition, refs)
                per = (time.perf_counter() - started) / args.repeat
            print(f"{label}: {per * 1000:.2f} ms per batch of {args.events}")
        db.dispose()


if __name__ == "__main__":
    main()
