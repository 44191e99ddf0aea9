"""Shared loading of the seed bundles' scenario files (bundles/<name>/tests/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (ROOT / "bundles").glob("*/") if (p / "schema.zed").is_file())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def scenario_paths(bundle: Path) -> list[Path]:
    """The bundle's scenario files, sorted."""
    return sorted((bundle / "tests").glob("*.yaml"))


def fixture_relationships(test_file: Path) -> list[str]:
    """The relationship tuples of the fixture a scenario file names."""
    spec = load_yaml(test_file)
    fixture = load_yaml((test_file.parent / spec["fixture"]).resolve())
    return list(fixture["relationships"])
