"""docs/architecture.md names every module, each in its package's section, and no module
that is gone."""

from __future__ import annotations

import re

from tests.support.paths import REPO

PACKAGES = ["contract", "common", "producer", "worker", "worker/engine", "worker/fleet",
            "local_fleet", "capacity_planner", "infra", "bench"]
NOT_MODULES = {"__init__.py", "__main__.py"}


def documented() -> dict[str, set[str]]:
    """Package folder -> the ``name.py`` names its section mentions."""
    text = (REPO / "docs" / "architecture.md").read_text()
    sections = re.split(r"^### `([\w/]+)/`\s*$", text, flags=re.M)
    return {sections[i]: set(re.findall(r"`(\w+\.py)`", sections[i + 1]))
            for i in range(1, len(sections), 2)}


def test_every_package_has_a_section():
    assert sorted(documented()) == sorted(PACKAGES)


def test_every_module_is_named_in_its_section_and_none_is_stale():
    docs = documented()
    missing, stale = [], []
    for package in PACKAGES:
        modules = {p.name for p in (REPO / package).glob("*.py")} - NOT_MODULES
        missing += [f"{package}/{m}" for m in sorted(modules - docs.get(package, set()))]
        stale += [f"{package}/{m}" for m in sorted(docs.get(package, set()) - modules)]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
    assert not stale, f"docs/architecture.md names modules that are gone: {', '.join(stale)}"
