"""README.md and docs/: links resolve, quoted figures match their source files, and the picture
of the package layers matches the imports in the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
PAGES = sorted([CHECKOUT / "README.md", *(CHECKOUT / "docs").rglob("*.md")])
PACKAGE = CHECKOUT / "semclip_bench"

#: A markdown link or image: [text](target) / ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _links(text: str) -> list[str]:
    """Link targets outside code (fenced blocks and inline code are not links)."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(CHECKOUT)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    targets = [t for t in _links(page.read_text()) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(CHECKOUT)}: links to missing files: {missing}"


def test_the_link_check_finds_links() -> None:
    assert _links("see [a](docs/a.md), ![b](b.png) and `[c](not/a/link)`") == ["docs/a.md", "b.png"]
    assert len(_links((CHECKOUT / "README.md").read_text())) >= 10


def _table(text: str) -> list[dict[str, str]]:
    """The first markdown table in ``text``, one dict per row keyed by the header cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, rows = split[0], split[2:]
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_readme_headline_cells_are_those_of_results_sweep() -> None:
    """The README's headline table quotes cells of results/sweep.md's Detection table; every
    quoted cell must be the committed one (no number typed by hand, none gone stale)."""
    readme = (CHECKOUT / "README.md").read_text()
    headline = _table(readme.split("## The headline table")[1].split("\n## ")[0])
    sweep = (CHECKOUT / "results" / "sweep.md").read_text()
    detection = _table(sweep.split("\n## Detection\n")[1].split("\n## ")[0])
    committed = {(row["Method"], row["Shots"]): row for row in detection}
    assert len(headline) >= 6
    for row in headline:
        source = committed[(row["Method"], row["Shots"])]
        for column, cell in row.items():
            assert cell == source[column], (row["Method"], row["Shots"], column)


#: The README's backbone table: column -> the committed table its cells are quoted from.
BACKBONE_SOURCES = {
    "sem-synth, shipped": "results/gpu/sweep.md",
    "sem-synth, random init": "results/gpu/control/sweep.md",
    "ELPV, shipped": "results/elpv/sweep.md",
    "ELPV, random init": "results/elpv/control/sweep.md",
}


def test_readme_backbone_cells_are_those_of_the_control_tables() -> None:
    """The README's "what the backbone contributes" table quotes iAUROC cells of the committed
    sweeps and their random-init controls; every quoted cell must be the committed one."""
    readme = (CHECKOUT / "README.md").read_text()
    quoted = _table(readme.split("## What the backbone contributes")[1].split("\n## ")[0])
    assert len(quoted) >= 10 and set(BACKBONE_SOURCES) <= set(quoted[0])
    for column, source in BACKBONE_SOURCES.items():
        text = (CHECKOUT / source).read_text()
        detection = _table(text.split("\n## Detection\n")[1].split("\n## ")[0])
        committed = {(row["Method"], row["Shots"]): row["iAUROC"] for row in detection}
        for row in quoted:  # bold marks the source table's own comparison: not quoted
            source = committed[(row["Method"], row["Shots"])].replace("**", "")
            assert row[column] == source, (column, row)


@pytest.mark.parametrize(
    ("study", "expected", "targets"),
    [
        ("backbone_elpv", {"random_init", "shipped", "formula", "formula_sem"}, True),
        ("backbone_sem", {"random_init", "shipped", "formula", "formula_sem"}, False),
    ],
)
def test_backbone_candidates_table_is_that_of_the_committed_rows(
    study: str, expected: set[str], targets: bool
) -> None:
    """``results/tuning/<study>/candidates.md`` (docs/tuning.md) was written by
    ``benchmarks.backbone_candidates`` from the committed candidate runs: its values and gains
    (the intervals need the uncommitted score files) and its target check recompute from them,
    and so does its zero-shot table from the committed ``pretrain evaluate`` files."""
    import sys

    sys.path.insert(0, str(CHECKOUT))  # benchmarks/ is not installed
    from benchmarks.backbone_candidates import (
        candidate_rows,
        compare_candidates,
        markdown,
        zero_shot_markdown,
        zero_shot_scores,
    )

    folder = CHECKOUT / "results" / "tuning" / study
    committed = (folder / "candidates.md").read_text()
    frame, candidates = compare_candidates(candidate_rows(folder), "random_init", resamples=0)
    assert expected <= set(candidates)
    fresh = markdown(frame, candidates, "random_init", targets=targets)
    fresh += zero_shot_markdown(
        zero_shot_scores(CHECKOUT / "results" / "tuning" / "backbone_zero_shot"), "shipped"
    )
    strip = re.compile(r"\*\*|\s\[[^\]]*\]")  # bold marks and intervals
    fresh_lines = fresh.splitlines()
    committed_lines = [strip.sub("", line) for line in committed.splitlines()]
    assert all(line in committed_lines for line in fresh_lines if line)


def test_performance_page_cites_existing_sections() -> None:
    """docs/performance.md cites results/performance.md by section title ("section ..." with the
    title, or the end of it, in double quotes); every cited title must exist."""
    page = " ".join((CHECKOUT / "docs" / "performance.md").read_text().split())
    headings = [
        line[3:]
        for line in (CHECKOUT / "results" / "performance.md").read_text().splitlines()
        if line.startswith("## ")
    ]
    cited = [
        title.removeprefix("... ")
        for group in re.findall(r'sections? (?:ending )?((?:"[^"]+"(?:,? and |, )?)+)', page)
        for title in re.findall(r'"([^"]+)"', group)
    ]
    assert len(cited) >= 10
    for title in cited:
        assert any(title in heading for heading in headings), title


# --------------------------------------------------------------------------------------------
# docs/architecture.md: the picture of the layers

#: Imported by every layer, so not drawn.
NOT_DRAWN = {"errors", "_version"}


def _top_level(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "semclip_bench":
        return None
    return parts[1] if len(parts) > 1 else "root"


def _imports_between_packages() -> set[tuple[str, str]]:
    """(importer, imported) pairs of top-level packages and modules of semclip_bench, from every
    import statement (function-level ones included), without the version string's imports."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        source = "root" if parts == ("__init__",) else parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [(alias.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module, name in names:
                target = _top_level(module)
                if target == "root" and name == "__version__":
                    continue  # the version string for provenance, not drawn
                if target and target != source and target not in NOT_DRAWN:
                    edges.add((source, target))
    return edges


def _drawn_edges() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(solid, dashed) arrows of the mermaid picture, by node id (labels resolved)."""
    text = (CHECKOUT / "docs" / "architecture.md").read_text()
    picture = text.split("```mermaid")[1].split("```")[0]
    ids = {"main": "__main__", "root": "root"}
    node = r'(\w+)(?:\["[^"]*"\])?'
    solid, dashed = set(), set()
    for line in picture.splitlines():
        match = re.match(rf"\s*{node}\s*(-->|-\.->)(?:\|[^|]*\|)?\s*{node}\s*$", line)
        if match:
            a, arrow, b = match.groups()
            edge = (ids.get(a, a), ids.get(b, b))
            (solid if arrow == "-->" else dashed).add(edge)
    return solid, dashed


def test_architecture_picture_draws_every_import_and_only_those() -> None:
    solid, dashed = _drawn_edges()
    assert solid == _imports_between_packages()
    # Dashed: the command groups the CLI imports by name.
    from semclip_bench.cli import COMMAND_MODULES

    assert dashed == {("cli", _top_level(m)) for m in COMMAND_MODULES}


def test_no_import_points_upward() -> None:
    """The layers of the picture form no cycle: an order exists in which every package imports
    only packages after it."""
    edges = _imports_between_packages()
    nodes = {n for edge in edges for n in edge}
    order: list[str] = []
    while nodes - set(order):
        free = [n for n in nodes - set(order) if all(b in order for a, b in edges if a == n)]
        assert free, f"import cycle among {sorted(nodes - set(order))}"
        order.extend(sorted(free))
