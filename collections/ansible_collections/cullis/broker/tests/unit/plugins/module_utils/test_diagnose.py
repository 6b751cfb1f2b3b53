# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.cullis.broker.plugins.module_utils import _diagnose as d

SUPERVISOR_LOG = """\
2026-11-27 23:50:01,001 INFO spawned: 'broker' with pid 100
2026-11-27 23:50:02,001 INFO spawned: 'redis' with pid 101
2026-11-27 23:50:06,001 INFO success: broker entered RUNNING state
2026-11-27 23:51:00,001 WARN exited: broker (terminated by SIGKILL; not expected)
2026-11-27 23:51:01,001 INFO spawned: 'broker' with pid 200
2026-11-27 23:51:09,001 WARN exited: broker (exit status 3; not expected)
2026-11-27 23:51:10,001 INFO spawned: 'broker' with pid 300
""".splitlines()

STARTUP_FAIL = """\
INFO:     Started server process [300]
INFO:     Waiting for application startup.
LIFESPAN: validate_config
LIFESPAN: init_telemetry
LIFESPAN: init_db
Traceback (most recent call last):
  File "/srv/app/db.py", line 10, in init_db
    await conn.execute(...)
asyncpg.exceptions.InvalidPasswordError: password authentication failed for user "atn"
LIFESPAN FAILED: InvalidPasswordError: password authentication failed for user "atn"
ERROR:    Application startup failed. Exiting.
""".splitlines()


def test_supervisor_events_and_restarts():
    ev = d.supervisor_events(SUPERVISOR_LOG, 'broker')
    assert [e['event'] for e in ev] == ['spawned', 'exited', 'spawned', 'exited', 'spawned']
    assert ev[1]['signal'] == 'SIGKILL' and ev[1]['exit_code'] is None
    assert ev[3]['exit_code'] == 3
    assert d.restart_count(ev) == 2
    last = d.last_exit(ev)
    assert last['exit_code'] == 3 and last['pid'] == 200
    assert d.restart_count(d.supervisor_events(SUPERVISOR_LOG, 'redis')) == 0


def test_startup_error_is_first_real_error_after_marker():
    line, evidence = d.startup_error(['old run', 'LIFESPAN FAILED: old'] + STARTUP_FAIL)
    assert line.startswith('LIFESPAN FAILED: InvalidPasswordError')
    assert any('asyncpg.exceptions' in e for e in evidence)
    assert d.classify_cause(line) == 'postgres'


def test_causes():
    assert d.classify_cause('LIFESPAN FAILED: RuntimeError: Failed to write bootstrap token to Vault') == 'vault'
    assert d.classify_cause('alembic.util.exc.CommandError: Can\'t locate revision') == 'migrations'
    assert d.classify_cause('something else entirely') == 'unknown'


def test_traceback_extraction():
    tb = d.last_traceback(STARTUP_FAIL)
    assert tb[0].startswith('Traceback')
    assert tb[-1].startswith('asyncpg.exceptions.InvalidPasswordError')


def test_exit_classes():
    assert d.classify_exit('running', None) == 'running'
    assert d.classify_exit('exited', 3, log_lines=STARTUP_FAIL) == 'startup_failure'
    assert d.classify_exit('exited', None, 'SIGKILL') == 'killed'
    assert d.classify_exit('exited', None, 'SIGKILL', oom_killed=True) == 'oom'
    assert d.classify_exit('exited', 1, log_lines=['Traceback (most recent call last):', 'MemoryError']) == 'oom'
    assert d.classify_exit('exited', 1, log_lines=['Traceback (most recent call last):', 'KeyError: x']) == 'crash'
    assert d.classify_exit('exited', 0) == 'stopped'
    assert d.classify_exit('fatal', None, spawn_error="can't find command") == 'never_started'
    assert d.shell_exit_code(None, 'SIGKILL') == 137
    assert d.shell_exit_code(3, None) == 3


def test_connection_errors_are_postgres_even_in_migration_tracebacks():
    line = ('LIFESPAN FAILED: DBAPIError: (sqlalchemy.dialects.postgresql.asyncpg.Error) '
            'password authentication failed for user "atn"')
    assert d.classify_cause(line) == 'postgres'
    assert d.classify_cause('File "alembic/runtime/migration.py" ... ' + line) == 'postgres'


def test_last_run_starts_at_the_launcher_line():
    lines = (['cullis-launch: memory limit 512 MB via cgroup /x', 'INFO:     Started server process [1]',
              'INFO:     Waiting for application startup.', 'LIFESPAN: validate_config',
              'LIFESPAN FAILED: RuntimeError: old failure'] + ['noise'] * 10
             + ['cullis-launch: memory limit 40 MB via cgroup /x'])
    run = d.last_run(lines)
    assert run == ['cullis-launch: memory limit 40 MB via cgroup /x']
    assert d.startup_error(lines) == (None, [])
    assert d.last_run(lines[:5])[0].startswith('cullis-launch')
