"""Measurements the end-to-end tests take (issue 18: failed requests under load, failover and
recovery times), printed again at the end of the pytest session, so that every `make test` log
records them (a passing test's own output is captured and never shown).

    from testkit.measurements import measured
    measured(f"rolling restart under load: {sent} requests, {failed} failed")
"""
from __future__ import annotations

LINES: list[str] = []


def measured(line: str) -> None:
    """Print `line` (the test's captured output) and keep it for the session's summary."""
    print(line)
    LINES.append(line)


def pytest_terminal_summary(terminalreporter):
    if LINES:
        terminalreporter.section("measurements (bench/ha_load.py scenarios, HA recoveries)")
        for line in LINES:
            terminalreporter.write_line(line)
