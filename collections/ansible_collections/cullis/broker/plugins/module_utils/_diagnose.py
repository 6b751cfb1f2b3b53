# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: classify why a stack service stopped, from exit status and logs.

Not a public API of the collection. Pure functions over text so they are unit-tested without
processes; `service_info` feeds them what the runtime (`_runtime.py`) and the logs say.

Exit classes (runbook section 1):
  running          the process is up
  startup_failure  exit 3 - uvicorn aborted the lifespan (Alembic, Vault, Postgres...)
  oom              out of memory: a MemoryError traceback (RLIMIT_AS / ulimit -v), a kernel or
                   cgroup OOM kill of the pid, or exit 137 with OOM evidence
  killed           SIGKILL (exit 137) without OOM evidence
  signaled         ended by another signal
  crash            exit 1 / 2 (or any other non-zero): uncaught exception, see the traceback
  stopped          exit 0 or stopped on purpose
  never_started    the runtime could not spawn it (spawn error)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

STARTUP_MARKERS = ('Waiting for application startup', 'LIFESPAN:')
_SUPERVISOR_EXIT = re.compile(r"exited: (?P<name>\S+) \((?P<how>exit status (?P<code>-?\d+)|terminated by "
                              r"(?P<sig>SIG[A-Z0-9]+)[^;]*);")
_SUPERVISOR_SPAWN = re.compile(r"spawned: '(?P<name>[^']+)' with pid (?P<pid>\d+)")
_SIGNALS = {'SIGHUP': 1, 'SIGINT': 2, 'SIGQUIT': 3, 'SIGABRT': 6, 'SIGKILL': 9, 'SIGSEGV': 11,
            'SIGPIPE': 13, 'SIGTERM': 15}
_CAUSES = [
    # a database that refuses the connection is a Postgres (or DATABASE_URL) fault even when the
    # traceback runs through the migration runner
    ('postgres', re.compile(r'password authentication failed|Connect call failed|Connection refused|could not connect|'
                            r'InvalidPasswordError|InvalidCatalogNameError|database "[^"]*" does not exist|'
                            r'role "[^"]*" does not exist|the database system is', re.I)),
    ('migrations', re.compile(r'alembic|migration|advisory lock|UndefinedTable|DuplicateTable', re.I)),
    ('vault', re.compile(r'vault|bootstrap token|private_key_pem|sealed', re.I)),
    ('postgres', re.compile(r'asyncpg|postgres|5432|password authentication failed|database .* does not exist|'
                            r'DATABASE_URL|Connect call failed|sqlalchemy', re.I)),
    ('redis', re.compile(r'redis', re.I)),
    ('config', re.compile(r'ADMIN_SECRET|validate_config|production requires|ValidationError|settings', re.I)),
    ('memory', re.compile(r'MemoryError|Cannot allocate memory|out of memory', re.I)),
]


def supervisor_events(lines, name):
    """Spawn and exit events of program `name` from supervisord's own log, oldest first.

    Each event: {'event': 'spawned', 'pid': int} or
    {'event': 'exited', 'exit_code': int|None, 'signal': 'SIGKILL'|None}.
    """
    events = []
    for line in lines:
        m = _SUPERVISOR_SPAWN.search(line)
        if m and m.group('name') == name:
            events.append({'event': 'spawned', 'pid': int(m.group('pid')), 'line': line.strip()})
            continue
        m = _SUPERVISOR_EXIT.search(line)
        if m and m.group('name') == name:
            events.append({'event': 'exited', 'exit_code': int(m.group('code')) if m.group('code') else None,
                           'signal': m.group('sig'), 'line': line.strip()})
    return events


def last_exit(events):
    """The last `exited` event and the pid it ended (from the spawn before it)."""
    pid = None
    last = None
    for ev in events:
        if ev['event'] == 'spawned':
            pid = ev['pid']
        else:
            last = dict(ev, pid=pid)
    return last


def restart_count(events):
    """Number of (re)spawns after the first one: every spawn beyond the first is a restart."""
    spawns = sum(1 for ev in events if ev['event'] == 'spawned')
    return max(spawns - 1, 0)


def _is_run_marker(line):
    return (line.startswith('cullis-launch:') or 'Started server process' in line
            or 'LIFESPAN: validate_config' in line)


def last_run(lines):
    """The log lines of the last run of the service.

    A run starts at a start marker: the process runtime launcher's `cullis-launch:` line (printed
    on each start with a memory limit), uvicorn's 'Started server process', or the first
    `LIFESPAN: validate_config`. Markers less than 8 lines apart belong to the same start.
    Without any marker: every line.
    """
    start = last_marker = None
    for i, line in enumerate(lines):
        if _is_run_marker(line):
            if last_marker is None or i - last_marker > 8:
                start = i
            last_marker = i
    return lines[start:] if start is not None else list(lines)


def startup_error(lines):
    """The first real error after the last startup marker, and the lines around it.

    Returns (error_line, evidence_lines) or (None, []).
    """
    run = last_run(lines)
    begin = 0
    for i, line in enumerate(run):
        if any(mark in line for mark in STARTUP_MARKERS):
            begin = i
            break
    evidence = []
    for line in run[begin:]:
        s = line.strip()
        if not s or s.startswith('LIFESPAN: ') or 'Waiting for application startup' in s:
            continue
        if s.startswith('LIFESPAN FAILED') or _looks_like_error(s):
            evidence.append(s)
    if not evidence:
        return None, []
    # the first line that is an error and not a traceback frame
    first = next((e for e in evidence if not e.startswith(('File "', 'Traceback'))), evidence[0])
    failed = next((e for e in evidence if e.startswith('LIFESPAN FAILED')), None)
    return (failed or first), evidence[:20]


def _looks_like_error(s):
    return bool(re.search(r'(Error|Exception|FAILED|failed|refused|returned HTTP [45]\d\d|Traceback|'
                          r'denied|sealed|timeout|Timeout)', s))


def classify_cause(text):
    """Which dependency an error text points at: migrations, vault, postgres, redis, config, memory."""
    for cause, rx in _CAUSES:
        if text and rx.search(text):
            return cause
    return 'unknown'


def last_traceback(lines):
    """The last Python traceback in the lines (list of lines, header to exception line)."""
    start = None
    for i, line in enumerate(lines):
        if 'Traceback (most recent call last)' in line:
            start = i
    if start is None:
        return []
    tb = [lines[start].rstrip()]
    for line in lines[start + 1:]:
        tb.append(line.rstrip())
        if line and not line.startswith((' ', '\t')) and not line.startswith('Traceback'):
            break
    return tb[:60]


def has_memory_error(lines):
    return any(re.search(r'\bMemoryError\b|Cannot allocate memory|std::bad_alloc', line) for line in lines)


def classify_exit(state, exit_code, signal_name=None, log_lines=(), oom_killed=False, spawn_error=None):
    """Exit class of a service (see the module docstring)."""
    run = last_run(list(log_lines))
    if state in ('running', 'starting') and exit_code is None:
        return 'running'
    if spawn_error and exit_code is None and not signal_name:
        return 'never_started'
    if oom_killed or has_memory_error(run):
        return 'oom'
    if signal_name == 'SIGKILL' or exit_code in (137, -9):
        return 'killed'
    if signal_name or (exit_code is not None and exit_code > 128):
        return 'signaled'
    if exit_code == 3:
        return 'startup_failure'
    if exit_code == 0:
        return 'stopped'
    if exit_code is not None:
        return 'crash'
    if state in ('stopped',):
        return 'stopped'
    return 'unknown'


def signal_number(name):
    return _SIGNALS.get(name)


def shell_exit_code(exit_code, signal_name):
    """Docker-style exit code: 128+signal for a signal, else the exit status."""
    if signal_name and signal_number(signal_name):
        return 128 + signal_number(signal_name)
    return exit_code
