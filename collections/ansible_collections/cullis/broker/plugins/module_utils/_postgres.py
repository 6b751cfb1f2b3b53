# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: PostgreSQL connection options and where the Postgres client tools run.

Not a public API of the collection. `postgres_argument_spec()` matches the doc fragment
`cullis.broker.postgres`. Every Postgres client program (psql, pg_dump, pg_restore, pg_isready)
is started through an *executor*, so the place the commands run is swappable:
`LocalExecutor` runs them as local subprocesses today; a compose executor (`docker compose exec
-T -e PGPASSWORD postgres ...`) only needs to implement `popen()` the same way.

The password never appears in argv or output: it is handed to the child in the PGPASSWORD
environment variable only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess
import uuid

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


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


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

    def run(self, program, args, stdin_data=None):
        proc = self.popen(program, args, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(stdin_data)
        return proc.returncode, out, self.scrub(err)

    def psql(self, sql, database=None, check=True):
        """Run SQL with ON_ERROR_STOP; returns rows as lists of strings (unaligned, tab separated)."""
        database = database or self.maintenance_db
        args = ['-X', '-A', '-t', '-q', '-F', '\t', '-v', 'ON_ERROR_STOP=1'] + self.conn_args(database)
        rc, out, err = self.run('psql', args, stdin_data=sql)
        if rc != 0:
            if not check:
                return None
            raise PostgresError("SQL on %s:%s/%s failed: %s" % (self.host, self.port, database, err.strip()))
        return [line.split('\t') for line in out.splitlines() if line != '']

    def scalar(self, sql, database=None):
        rows = self.psql(sql, database)
        return rows[0][0] if rows and rows[0] else None

    def session(self, database):
        return PsqlSession(self, database)

    # -- common queries ------------------------------------------------------------------------
    def database_exists(self, name):
        return self.scalar("SELECT count(*) FROM pg_database WHERE datname = %s;" % quote_literal(name)) == '1'

    def database_owner(self, name):
        return self.scalar("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s;"
                           % quote_literal(name))

    def server_version(self):
        return self.scalar("SHOW server_version;")

    def list_databases(self, prefix):
        rows = self.psql("SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1;"
                         % quote_literal(prefix))
        return [r[0] for r in rows]


# Same counts as a single SELECT returning "schema.table<TAB>count" rows (run inside a session).
ROW_COUNT_QUERY = r"""
SELECT n.nspname || '.' || c.relname,
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname),
                                             false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY 1;
"""


def row_counts(conn, database):
    """Exact row count per table (`schema.table` -> int) of a database."""
    return dict((r[0], int(r[1])) for r in conn.psql(ROW_COUNT_QUERY, database))


class PsqlSession(object):
    """One long-lived psql process fed through a pipe: keeps a transaction (and an exported
    snapshot) open while other programs run. Each `query()` ends with an \\echo marker."""

    def __init__(self, conn, database):
        self.conn = conn
        self.database = database
        self.proc = None

    def __enter__(self):
        args = ['-X', '-A', '-t', '-q', '-F', '\t', '-v', 'ON_ERROR_STOP=1'] + self.conn.conn_args(self.database)
        self.proc = self.conn.popen('psql', args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        return self

    def query(self, sql):
        marker = '__cullis_end_%s__' % uuid.uuid4().hex
        try:
            self.proc.stdin.write(sql.rstrip() + '\n\\echo ' + marker + '\n')
            self.proc.stdin.flush()
        except (IOError, OSError):
            pass
        rows = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ''
                self.proc.wait()
                raise PostgresError("psql session on %s failed: %s" % (self.database, self.conn.scrub(err).strip()))
            line = line.rstrip('\n')
            if line == marker:
                return rows
            if line:
                rows.append(line.split('\t'))

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.write('ROLLBACK;\n\\q\n')
                self.proc.stdin.close()
            except (IOError, OSError):
                pass
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        return False
