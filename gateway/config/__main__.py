"""``python -m gateway.config [DOCS_DIR]``: write docs/configuration.md and
docs/schema/*.json from the configuration's schemas (``make config-docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.config._reference import write

if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(f"wrote {path}")
