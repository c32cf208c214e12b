"""The README says what the code does: every setting, the layers as .importlinter enforces them, links that
resolve, and benchmark commands that exist."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from nftpulse.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
TEST_ONLY_VARIABLES = {"PULSE_TEST_POSTGRES_URL"}


def test_configuration_table_names_every_setting() -> None:
    named = set(re.findall(r"PULSE_[A-Z0-9_]+", README)) - TEST_ONLY_VARIABLES
    settings = {f"PULSE_{name.upper()}" for name in Settings.model_fields}
    assert settings - named == set(), "settings the README does not name"
    assert named - settings == set(), "variables the README names that no setting reads"


def importlinter_layers() -> list[tuple[list[str], str]]:
    """Each layer of the layers contract, top first: its modules and the separator between them (``|``
    independent, ``:`` may import each other)."""
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    lines = [line.strip() for line in config["importlinter:contract:layers"]["layers"].splitlines()]
    return [(re.split(r"\s*[|:]\s*", line), ":" if ":" in line else "|") for line in lines if line]


def test_readme_states_the_layers_importlinter_enforces() -> None:
    (wiring, _), *rest = importlinter_layers()
    # Every module of the nftpulse package itself is wiring, and the contract lists it.
    modules = {f"nftpulse.{p.stem}" for p in (REPO / "nftpulse").glob("*.py") if p.stem != "__init__"}
    assert set(wiring) == modules, "nftpulse/*.py and the wiring layer of .importlinter differ"
    parts = [f" {sep} ".join(f"`{name.removeprefix('nftpulse.')}`" for name in layer) for layer, sep in rest]
    stated = "wiring (`nftpulse/*.py`) > " + " > ".join(parts)
    assert stated in " ".join(README.split()), f"the README's layout does not say: {stated}"


def test_links_to_repository_files_resolve() -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (REPO / target).exists(), f"README links to a missing file: {target}"


def test_benchmark_commands_exist() -> None:
    for module in set(re.findall(r"python -m (bench\.[a-z_]+)", README)):
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module
    for module in set(re.findall(r"python -m (nftpulse\.[a-z_.]+)", README)):
        path = REPO / module.removeprefix("nftpulse.").replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module
