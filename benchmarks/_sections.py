"""Keyed sections of a results Markdown file: a run adds or replaces its own section only."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = (
    "# Performance\n\n"
    "Written by `python -m benchmarks.throughput` (one section per device, backbone, precision) "
    "and `python -m benchmarks.sweep_bench` (one per device, command, feature-cache mode); "
    "re-running a key replaces its section, other sections are kept.\n"
)
_SECTION = re.compile(r"<!-- section: (?P<key>.*?) -->\n(?P<body>.*?)<!-- end section -->\n", re.S)


def read_sections(path: Path) -> dict[str, str]:
    """Sections of ``path`` in file order: key -> body (with its heading)."""
    if not path.exists():
        return {}
    return {m["key"]: m["body"] for m in _SECTION.finditer(path.read_text())}


def write_section(path: Path, key: str, body: str) -> None:
    """Add or replace the section ``key`` of ``path`` (created with a header if missing)."""
    path = Path(path)
    sections = read_sections(path)
    sections[key] = f"## {key}\n\n{body.rstrip()}\n\n"
    parts = [HEADER, ""]
    for name, text in sections.items():
        parts.append(f"<!-- section: {name} -->\n{text}<!-- end section -->\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def drop_section(path: Path, key: str) -> bool:
    """Remove the section ``key`` of ``path`` (a measurement of code or weights no longer in use);
    returns whether it was there."""
    path = Path(path)
    sections = read_sections(path)
    if sections.pop(key, None) is None:
        return False
    parts = [HEADER, ""]
    for name, text in sections.items():
        parts.append(f"<!-- section: {name} -->\n{text}<!-- end section -->\n")
    path.write_text("\n".join(parts))
    return True
