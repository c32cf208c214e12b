"""Pulse's Grafana dashboards as code, built with ``grafana-foundation-sdk`` (Grafana 11 schema).

``python -m nftpulse.dashboards.build`` writes one JSON file per dashboard into
``dashboards/generated/``, which Grafana loads through ``dashboards/provisioning/dashboards/pulse.yml``.
``--check`` regenerates in memory and exits 1 when the committed files differ, so CI catches a builder
change whose JSON was not committed.

Every query is written against the names in :mod:`nftpulse.core.metrics` (application metrics) and the
Temporal SDK's own Prometheus exporter (``temporal_*``: histograms in milliseconds, counters without
``_total``). The Prometheus job names (``kit.py``) are the ones ``dashboards/prometheus/prometheus.yml``
scrapes; a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from nftpulse.dashboards.kit import (
    GENERATED_DIR,
)
from nftpulse.dashboards.service import overview, pipeline
from nftpulse.dashboards.workers import notifications, temporal_workers

DASHBOARDS = {
    "pulse-overview.json": overview,
    "pulse-pipeline.json": pipeline,
    "pulse-notifications.json": notifications,
    "pulse-temporal-workers.json": temporal_workers,
}


def render(model: dict[str, object]) -> str:
    """Serialise deterministically: sorted keys and a final newline, so regeneration is byte-identical."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """File name → JSON text for every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def write(out_dir: Path) -> list[Path]:
    """Write every dashboard into ``out_dir`` and drop stale generated files left by renamed dashboards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = build_all()
    written: list[Path] = []
    for name, text in rendered.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in out_dir.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    return written


def check(out_dir: Path) -> list[str]:
    """Names of generated files that are missing, differ from a fresh build, or should not exist."""
    rendered = build_all()
    problems = []
    for name, text in rendered.items():
        path = out_dir / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from a fresh build")
    problems.extend(
        f"{stale.name}: not produced by the builder"
        for stale in sorted(out_dir.glob("*.json"))
        if stale.name not in rendered
    )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the dashboards, or with ``--check`` exit 1 when the committed JSON is out of date."""
    parser = argparse.ArgumentParser(
        prog="python -m nftpulse.dashboards.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if regenerating would change a file")
    parser.add_argument(
        "--out", type=Path, default=GENERATED_DIR, help="output folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(f"dashboards: {problem}", file=sys.stderr)
        if problems:
            print(
                "dashboards: run `python -m nftpulse.dashboards.build` and commit the result", file=sys.stderr
            )
            return 1
        print(f"dashboards: {len(DASHBOARDS)} dashboards up to date in {args.out}")
        return 0
    for path in write(args.out):
        print(f"dashboards: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
