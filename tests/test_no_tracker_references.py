"""Comments and docs cite the rule (D1..D13), the RFC or the design section
that explains a line, never the tracker: an issue number means nothing to a
reader without the tracker, and nothing once the issue is closed."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("gateway", "tests", "docs", "bench", "deploy", "conformance")
TRACKER = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
TEXT = {".py", ".md", ".toml", ".sh", ".template", ".yml", ".yaml", ".json", ".cfg"}


def test_no_comment_or_doc_names_a_tracker_issue() -> None:
    hits = []
    files = [REPO / "README.md", REPO / "THREAT_MODEL.md", REPO / "Makefile",
             REPO / "pyproject.toml"]
    for folder in FOLDERS:
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in TEXT]
    for path in files:
        if path == Path(__file__).resolve() or "__pycache__" in path.parts:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if TRACKER.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == []
