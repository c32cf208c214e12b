"""The wheel: one top-level package with its data, installable without the ``embedded`` extra, runnable, and
declaring every third-party module it imports.

The wheel is built from a copy of the checkout (setuptools leaves a ``build/`` folder behind, and other
builds may run in the checkout at the same time). It is installed with ``--no-deps`` into a fresh
virtualenv that sees this one's site-packages through a ``.pth`` line, so the test needs no network and
takes seconds; the ``temporal`` binary of the ``embedded`` extra is beside this venv's interpreter, not the
fresh one's, so the fresh install is exactly what a production install without the extra finds.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from nftpulse import __version__

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
# What the wheel must carry besides Python modules: templates, dashboards, the Alembic environment.
DATA = {
    "nftpulse/templates/sources/en/": "the notification templates",
    "nftpulse/dashboards/generated/": "the generated Grafana dashboards",
    "nftpulse/dashboards/prometheus/prometheus.yml": "the Prometheus configuration",
}
# Modules a file may import from an extra rather than the main dependencies: the dashboards build tool.
EXTRA_FOR_PATH = {"nftpulse/dashboards/": "dashboards"}
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".pulse", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench", "tests"
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    assert match, spec
    return normalize(match.group(0))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not UV.exists():
        pytest.skip(f"uv not found beside {sys.executable}: run scripts/bootstrap")
    src = tmp_path_factory.mktemp("src") / "pulse"
    shutil.copytree(REPO, src, symlinks=True, ignore=COPY_IGNORE)
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(UV), "build", "--wheel", "--offline", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("nftpulse-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed alone; the dependencies come from this venv."""
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run(
        [str(UV), "venv", "--quiet", "--python", sys.executable, str(root)], check=True, timeout=120
    )
    python = root / "bin" / "python"
    subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--offline", "--no-deps", "--python", str(python), str(wheel)],
        check=True,
        timeout=300,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A bare path line, so this venv's own .pth files (the editable install of the checkout) stay out.
    Path(site, "zz-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


def run_in(venv: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run from an empty folder with a PATH that holds no ``temporal`` of this venv's."""
    base = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(venv)}
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=120, cwd=venv, env={**base, **(env or {})}
    )


def wheel_python_files(wheel: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".py"):
                yield name, archive.read(name)


def test_wheel_holds_only_nftpulse(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"nftpulse", f"nftpulse-{wheel.name.split('-')[1]}.dist-info"}, top
    for prefix, what in DATA.items():
        assert any(name.startswith(prefix) for name in names), f"the wheel lacks {what} ({prefix})"
    subpackages = {p.name for p in (REPO / "nftpulse").iterdir() if p.is_symlink()}
    for package in subpackages:
        assert f"nftpulse/{package}/__init__.py" in names, f"nftpulse/{package} is not in the wheel"
    migrations = REPO / "store" / "migrations"
    if migrations.is_dir():
        shipped = {n for n in names if n.startswith("nftpulse/store/migrations/")}
        expected = {
            "nftpulse/store/migrations/" + str(p.relative_to(migrations))
            for p in migrations.rglob("*")
            if p.is_file() and p.suffix in (".py", ".mako") and "__pycache__" not in p.parts
        }
        assert expected <= shipped, f"migrations missing from the wheel: {sorted(expected - shipped)}"


def test_installed_wheel_runs_without_the_embedded_extra(venv: Path) -> None:
    pulse = str(venv / "bin" / "pulse")
    version = run_in(venv, pulse, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"nftpulse {__version__}"
    where = run_in(
        venv, str(venv / "bin" / "python"), "-c", "import nftpulse.api.app as m; print(m.__file__)"
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv)), f"imported from outside the install: {where.stdout}"
    assert not (venv / "bin" / "temporal").exists()
    # Without the dev server's binary and without a Temporal address, `pulse up` says what to install.
    env = {"PULSE_DATA_DIR": str(venv / "data"), "PULSE_LOG_LEVEL": "WARNING"}
    up = run_in(venv, pulse, "up", env=env)
    assert up.returncode == 1, up.stdout + up.stderr
    message = " ".join(up.stderr.split())
    assert "nftpulse[embedded]" in message and "PULSE_TEMPORAL_ADDRESS" in message, message


def test_every_imported_module_is_declared(wheel: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(spec) for spec in project["dependencies"]}
    extras = {
        extra: {requirement_name(spec) for spec in specs}
        for extra, specs in project["optional-dependencies"].items()
    }
    distributions = packages_distributions()
    undeclared: dict[str, str] = {}
    for path, source in wheel_python_files(wheel):
        allowed = set(declared)
        for prefix, extra in EXTRA_FOR_PATH.items():
            if path.startswith(prefix):
                allowed |= extras[extra]
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "nftpulse":
                    continue
                providers = {normalize(d) for d in distributions.get(top, [])}
                assert providers, f"{path} imports {top}, which no installed distribution provides"
                if not providers & allowed:
                    undeclared[f"{path}: {top}"] = " or ".join(sorted(providers))
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def test_production_image_installs_no_extras() -> None:
    """The Dockerfile installs Pulse without extras: no dev-server binary in production images."""
    installs = [
        line for line in (REPO / "Dockerfile").read_text().splitlines() if re.search(r"\bpip install\b", line)
    ]
    assert installs, "the Dockerfile installs nothing"
    for line in installs:
        assert "[" not in line, f"the image installs an extra: {line}"
        assert "temporal" not in line, line


def test_scripts_up_installs_the_embedded_extra() -> None:
    up = (REPO / "scripts" / "up").read_text()
    assert re.search(r"^scripts/bootstrap\s+\S*\bembedded\b", up, re.M), up
    assert os.access(REPO / "scripts" / "up", os.X_OK)
