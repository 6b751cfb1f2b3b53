# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: PostgreSQL connection options and where the Postgres client tools run.

Not a public API of the collection. `postgres_argument_spec()` matches the doc fragment
`cullis.broker.postgres`. Every Postgres client program (psql, pg_dump, pg_restore, pg_isready)
is started through an *executor*, so the place the commands run is swappable:
`LocalExecutor` runs them as local subprocesses today; a compose executor (`docker compose exec
-T -e PGPASSWORD postgres ...`) only needs to implement `popen()` the same way.

Every SQL statement goes through psycopg2 with bound parameters (`PostgresConnection.connect()`,
`query()`, `value()`, `execute()`, `PgSession`), never through strings piped to psql; identifiers
are composed with `psycopg2.sql.Identifier` (`compose()`). The client programs run only to dump
and restore (pg_dump, pg_restore, and psql reading a plain-format dump). psycopg2 is imported lazily so a target without it gets a clear
error naming the package to install (`require_psycopg2()`), not a traceback.

The password never appears in argv or output: it is handed to the child in the PGPASSWORD
environment variable, or to libpq as a connection parameter, only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess
import uuid
from contextlib import contextmanager

from ansible.module_utils.basic import env_fallback
from ansible_collections.cullis.broker.plugins.module_utils._redact import scrub

DEFAULT_PG_BIN_DIR = '/usr/lib/postgresql/15/bin'


def postgres_argument_spec():
    """Options of plugins/doc_fragments/postgres.py, for AnsibleModule(argument_spec=...)."""
    return dict(
        login_host=dict(type='str', default='127.0.0.1', aliases=['host'],
                        fallback=(env_fallback, ['PGHOST'])),
        login_port=dict(type='int', default=5432, aliases=['port'], fallback=(env_fallback, ['PGPORT'])),
        login_user=dict(type='str', default='postgres', aliases=['user'],
                        fallback=(env_fallback, ['PGUSER'])),
        login_password=dict(type='str', no_log=True, aliases=['password'],
                            fallback=(env_fallback, ['PGPASSWORD'])),
        maintenance_db=dict(type='str', default='postgres'),
        pg_bin_dir=dict(type='path', default=DEFAULT_PG_BIN_DIR),
        connect_timeout=dict(type='int', default=10),
    )


class PostgresError(Exception):
    """An operator-facing error; the message never contains the password."""


PSYCOPG2_MISSING = ("the Python library psycopg2 is missing on the host this module runs on (interpreter %s); "
                    "install it (Debian: apt-get install python3-psycopg2; the cullis.broker.postgres role does "
                    "this on database hosts) or point ansible_python_interpreter at a Python that has it")


def require_psycopg2():
    """Import psycopg2 (and psycopg2.sql) or raise PostgresError saying how to install it."""
    try:
        import psycopg2
        import psycopg2.sql  # noqa: F401  (composes identifiers)
    except ImportError:
        import sys
        raise PostgresError(PSYCOPG2_MISSING % sys.executable)
    return psycopg2


def sql_identifier(name):
    """A safely quoted identifier for psycopg2 `sql.SQL(...).format(...)`."""
    return require_psycopg2().sql.Identifier(name)


def compose(template, *identifiers):
    """`template` with each `{}` replaced by a quoted identifier (database, role, table names):
    `compose("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)`. Values go in bound parameters."""
    sql = require_psycopg2().sql
    return sql.SQL(template).format(*[sql.Identifier(i) for i in identifiers])


class LocalExecutor(object):
    """Runs the Postgres client programs as local subprocesses."""

    name = 'local'

    def __init__(self, bin_dir):
        self.bin_dir = bin_dir

    def program(self, name):
        path = os.path.join(self.bin_dir, name)
        if not os.access(path, os.X_OK):
            raise PostgresError("%s not found or not executable in pg_bin_dir %s; install the PostgreSQL 15 "
                                "client programs or set pg_bin_dir" % (name, self.bin_dir))
        return path

    def popen(self, program, args, env, stdin=None, stdout=None, stderr=None, text=False):
        full_env = dict(os.environ)
        for key in list(full_env):
            if key.startswith('PG'):
                del full_env[key]
        full_env.update(env)
        full_env['LC_ALL'] = 'C'
        return subprocess.Popen([self.program(program)] + list(args), env=full_env, stdin=stdin,
                                stdout=stdout, stderr=stderr, universal_newlines=text, close_fds=True)


class PostgresConnection(object):
    """Connection parameters plus the executor; builds argv/env for the client programs."""

    def __init__(self, params, executor=None):
        self.host = params['login_host']
        self.port = params['login_port']
        self.user = params['login_user']
        self.password = params.get('login_password')
        self.maintenance_db = params.get('maintenance_db') or 'postgres'
        self.connect_timeout = params.get('connect_timeout') or 10
        self.executor = executor or LocalExecutor(params.get('pg_bin_dir') or DEFAULT_PG_BIN_DIR)

    def env(self):
        env = {'PGCONNECT_TIMEOUT': str(self.connect_timeout), 'PGAPPNAME': 'cullis.broker.pg_backup'}
        if self.password:
            env['PGPASSWORD'] = self.password
        return env

    def conn_args(self, database):
        return ['-h', self.host, '-p', str(self.port), '-U', self.user, '-d', database]

    def scrub(self, text):
        """Remove the password from a message, in case a server echoes it back."""
        return scrub(text, [self.password] if self.password else [])

    def popen(self, program, args, **kwargs):
        return self.executor.popen(program, args, self.env(), **kwargs)

    # -- psycopg2: bound parameters ------------------------------------------------------------
    def connect(self, database=None):
        """A psycopg2 connection (autocommit) to `database`; errors are PostgresError without the password."""
        psycopg2 = require_psycopg2()
        database = database or self.maintenance_db
        kwargs = dict(host=self.host, port=self.port, user=self.user, dbname=database,
                      connect_timeout=self.connect_timeout, application_name='cullis.broker')
        if self.password:
            kwargs['password'] = self.password
        try:
            conn = psycopg2.connect(**kwargs)
        except psycopg2.Error as e:
            raise PostgresError("cannot connect to PostgreSQL at %s:%s as %s (database %s): %s"
                                % (self.host, self.port, self.user, database, self.scrub(str(e)).strip()))
        conn.autocommit = True
        return conn

    def pg_session(self, database=None):
        return PgSession(self, database or self.maintenance_db)

    def query(self, statement, params=None, database=None):
        """Rows (tuples of Python values) of one statement with bound `params`."""
        with self.pg_session(database) as s:
            return s.query(statement, params)

    def value(self, statement, params=None, database=None):
        """First column of the first row, or None."""
        rows = self.query(statement, params, database)
        return rows[0][0] if rows else None

    def execute(self, statement, params=None, database=None):
        """Run one statement (autocommit) with bound `params`; returns the rowcount."""
        with self.pg_session(database) as s:
            return s.execute(statement, params)

    # -- common queries ------------------------------------------------------------------------
    def database_exists(self, name):
        return self.value("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)) == 1

    def database_owner(self, name):
        return self.value("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,))

    def server_version(self):
        return self.value("SHOW server_version")

    def list_databases(self, prefix):
        rows = self.query("SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (prefix,))
        return [r[0] for r in rows]


class PgSession(object):
    """One psycopg2 connection to a database (autocommit), used as a context manager. Every
    statement takes bound parameters; `transaction()` groups statements atomically and
    `stream()` reads a large result through a server-side cursor, in batches."""

    def __init__(self, conn, database):
        self.conn = conn
        self.database = database
        self.db = None

    def __enter__(self):
        self.db = self.conn.connect(self.database)
        return self

    def __exit__(self, *exc):
        if self.db is not None:
            self.db.close()
            self.db = None
        return False

    def _error(self, e):
        return PostgresError("SQL on %s:%s/%s failed: %s" % (self.conn.host, self.conn.port, self.database,
                                                             self.conn.scrub(str(e)).strip()))

    def execute(self, statement, params=None, cursor=None):
        """Run one statement; returns the cursor's rowcount."""
        psycopg2 = require_psycopg2()
        try:
            if cursor is not None:
                cursor.execute(statement, params)
                return cursor.rowcount
            with self.db.cursor() as cur:
                cur.execute(statement, params)
                return cur.rowcount
        except psycopg2.Error as e:
            raise self._error(e)

    def query(self, statement, params=None, cursor=None):
        psycopg2 = require_psycopg2()
        try:
            if cursor is not None:
                cursor.execute(statement, params)
                return cursor.fetchall()
            with self.db.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        except psycopg2.Error as e:
            raise self._error(e)

    def value(self, statement, params=None):
        rows = self.query(statement, params)
        return rows[0][0] if rows else None

    @contextmanager
    def _transaction(self, cursor_name=None):
        """A cursor (named = server-side) inside one transaction: committed if the block ends
        normally, else rolled back; the connection is back in autocommit mode afterwards."""
        psycopg2 = require_psycopg2()
        self.db.autocommit = False
        try:
            with self.db.cursor(name=cursor_name) as cur:
                yield cur
            self.db.commit()
        except psycopg2.Error as e:
            self.db.rollback()
            raise self._error(e)
        except BaseException:
            self.db.rollback()
            raise
        finally:
            self.db.autocommit = True

    def transaction(self):
        """`with session.transaction() as cur:` - statements (`execute(..., cursor=cur)`) committed together."""
        return self._transaction()

    @contextmanager
    def snapshot(self):
        """`with session.snapshot() as (snapshot_id, cur):` - a REPEATABLE READ, READ ONLY transaction
        held open for the block, its snapshot exported: `pg_dump --snapshot=<snapshot_id>` sees
        exactly what `query(..., cursor=cur)` sees. Rolled back (it changed nothing) at the end."""
        psycopg2 = require_psycopg2()
        with self.db.cursor() as cur:
            self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", cursor=cur)
            try:
                snapshot_id = self.query("SELECT pg_export_snapshot()", cursor=cur)[0][0]
                yield snapshot_id, cur
            finally:
                try:
                    cur.execute("ROLLBACK")
                except psycopg2.Error:
                    pass

    def stream(self, statement, params=None, batch=2000):
        """Yield the rows of a (large) query through a server-side cursor, `batch` rows at a time."""
        with self._transaction('cullis_stream_%s' % uuid.uuid4().hex) as cur:
            cur.itersize = batch
            cur.execute(statement, params)
            yield from cur


# Exact row count per table: rows of (schema.table, count as text). No bound parameters (the
# `%I` belong to format()), so it must be run with params=None.
ROW_COUNT_QUERY = r"""
SELECT n.nspname || '.' || c.relname,
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname),
                                             false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY 1
"""


def row_counts(session, cursor=None):
    """Exact row count per table (`schema.table` -> int) of the session's database; with `cursor`
    (from `PgSession.snapshot()`), as of that snapshot."""
    return dict((name, int(count)) for name, count in session.query(ROW_COUNT_QUERY, cursor=cursor))
