"""Regenerate the CLI output embedded in README.md and docs/*.md.

Blocks look like::

    <!-- ftmem: estimate llama2-13b --method qlora -->
    ```
    ...output...
    ```
    <!-- /ftmem -->

Run ``python scripts/update_docs.py`` after a change that moves a number;
``tests/test_docs.py`` fails while any block is stale.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- ftmem: (?P<cmd>.+?) -->\n)```[a-z]*\n.*?```\n(<!-- /ftmem -->)", re.S)
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def render(cmd: str) -> str:
    from ftmem.cli import app

    res = CliRunner().invoke(
        app, shlex.split(cmd), env={"COLUMNS": "100", "NO_COLOR": "1"}, prog_name="ftmem"
    )
    if res.exit_code not in (0, 1):
        raise SystemExit(f"`ftmem {cmd}` failed: {res.output}")
    return res.stdout


def regenerate(text: str) -> str:
    def sub(match: re.Match[str]) -> str:
        lang = "json" if "--format json" in match["cmd"] else ""
        return f"{match.group(1)}```{lang}\n$ ftmem {match['cmd']}\n{render(match['cmd'])}```\n{match.group(3)}"

    return BLOCK.sub(sub, text)


SCHEMA = ROOT / "docs" / "schema" / "estimate.schema.json"


def schema_text() -> str:
    import json

    from ftmem.present.estimate import estimate_schema

    return json.dumps(estimate_schema(), indent=2) + "\n"


def main() -> int:
    SCHEMA.parent.mkdir(exist_ok=True)
    if not SCHEMA.exists() or SCHEMA.read_text(encoding="utf-8") != schema_text():
        SCHEMA.write_text(schema_text(), encoding="utf-8")
        print(f"updated {SCHEMA.relative_to(ROOT)}")
    for path in DOC_FILES:
        if not path.exists():
            continue
        old = path.read_text(encoding="utf-8")
        new = regenerate(old)
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
