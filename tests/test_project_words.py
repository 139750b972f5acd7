"""The project speaks of itself: its documentation and code name no machine path of where it was built and
no circumstance of how it was written; results say what was measured, on which hardware, on which date."""

from __future__ import annotations

import re

from tests.helpers import REPO

TEXT = [REPO / "README.md", REPO / "benchmarks" / "RESULTS.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = [
    path
    for folder in ("dataengine", "pipelines", "trainer", "benchmarks", "scripts", "manifests")
    for path in sorted((REPO / folder).rglob("*"))
    if path.suffix in (".py", ".md", ".toml", ".sh")
]
ANYWHERE = re.compile(r"/work/|\.library/|device tool|can_start_another", re.IGNORECASE)
# "session" as the circumstance of writing ("the session that built it", "a GPU session"); pytest's session
# fixtures and Ray's session folder are the tools' own words
IN_PROSE = re.compile(
    r"\b(?:this|the|a|that|GPU|device|one|each|every|later|earlier)\s+sessions?\b(?!\s+(?:fixture|scope))"
    r"|project's sessions|\bengineers?\b|\blent\b",
    re.IGNORECASE,
)


def test_no_machine_paths_or_circumstances():
    found = []
    for path in [*TEXT, *CODE]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if ANYWHERE.search(line) or (path in TEXT and IN_PROSE.search(line)):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)
