"""A regular expression written for a double-quoted YAML string does not work in any other
scalar style. YAML turns "\\d" into \\d only inside double quotes; in a plain, single-quoted or
block (`>-`, `|`) scalar the two backslashes reach Jinja and the regex engine as a literal
backslash, so `regex_findall('x (\\\\d+)')` silently matches nothing there. That broke the OOM
recovery once (a regex moved from "..." into a `>-` block: every OOM looked like one without a
memory limit). Pure file reads: every YAML file of the collection, the playbooks and molecule."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROOTS = [REPO / "collections" / "ansible_collections" / "cullis" / "broker", REPO / "playbooks", REPO / "molecule"]
FILES = sorted(p for root in ROOTS for p in root.rglob("*.yml") if "tests/output" not in str(p))
# a Jinja string literal holding a doubled backslash: '...\\...' or "...\\..."
DOUBLED_IN_LITERAL = re.compile(r"""'[^'\n]*\\\\[^'\n]*'|"[^"\n]*\\\\[^"\n]*\"""")


def doubled_backslashes(path: Path) -> list[str]:
    found = []
    for event in yaml.parse(path.read_text()):
        if isinstance(event, yaml.ScalarEvent) and event.style != '"' and "{{" in event.value:
            for expr in re.findall(r"\{\{.*?\}\}", event.value, re.S):
                if DOUBLED_IN_LITERAL.search(expr):
                    found.append(f"{path.name}:{event.start_mark.line + 1}: {expr[:120]}")
    return found


def test_the_check_sees_the_defect_it_guards_against(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("x: >-\n  {{ s | regex_findall('limit (\\\\d+)') }}\n"
                   "y: \"{{ s | regex_findall('limit (\\\\d+)') }}\"\n")
    found = doubled_backslashes(bad)
    assert len(found) == 1 and ":1:" in found[0], found  # the block scalar, not the double-quoted one


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_doubled_backslash_in_jinja_outside_double_quotes(path):
    assert doubled_backslashes(path) == []
