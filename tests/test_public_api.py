"""The plugin API is exactly ``eventd.__all__``, and the README documents exactly it;
first-party plugins import only from ``eventd``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import eventd

ROOT = Path(__file__).resolve().parents[1]


def documented() -> set[str]:
    """The names in the first column of the README's "The plugin API" table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The plugin API", 1)[1].split("\n#", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_all_is_the_documented_plugin_api() -> None:
    exported = set(eventd.__all__)
    doc = documented()
    assert exported - doc == set(), "exported but not in the README's plugin API table"
    assert doc - exported == set(), "in the README's plugin API table but not exported"
    for name in eventd.__all__:
        assert hasattr(eventd, name), name


def test_plugins_import_only_from_eventd() -> None:
    offenders = []
    for path in [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "tests/plugin_pkg").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("eventd."):
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(ROOT)}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("eventd.")
                ]
    assert offenders == []
