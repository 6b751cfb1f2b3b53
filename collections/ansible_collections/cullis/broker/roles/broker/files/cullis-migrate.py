"""Alembic plan / upgrade of a Cullis broker source tree against the stack's database.

usage: cullis-migrate.py --env-file FILE --tree DIR (plan | upgrade | current)

Runs with the broker's venv Python (alembic, SQLAlchemy, asyncpg). DATABASE_URL comes from the
env file into the process environment (the broker's alembic/env.py reads it there; it is never
printed). Prints one JSON object on stdout:
  plan:    {"current": [revisions in alembic_version], "heads": [the tree's heads],
            "pending": [{"revision", "doc"}, ... in apply order], "known": current revisions the tree knows}
  current: {"current": [...]}
  upgrade: {"before": [...], "after": [...], "applied": [...]}; exit 1 with {"error", "before", "after"}
           when a migration fails.
`upgrade` runs `alembic upgrade head` from the tree under the migration advisory lock
864996388670390494 (contract section 1): a tree whose alembic/env.py takes that lock itself
(as Cullis brokers do) is left to take it; otherwise this process holds it for the whole upgrade.
"""
import asyncio
import json
import os
import sys

LOCK_KEY = 864996388670390494


def read_env(path):
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith('#') and '=' in line:
                key, value = line.split('=', 1)
                values[key.strip()] = value.strip()
    return values


def _asyncpg_dsn():
    url = os.environ['DATABASE_URL']
    return 'postgresql://' + url.split('://', 1)[1]


async def _current():
    import asyncpg
    conn = await asyncpg.connect(_asyncpg_dsn())
    try:
        exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not exists:
            return []
        return sorted(r[0] for r in await conn.fetch('SELECT version_num FROM alembic_version'))
    finally:
        await conn.close()


def current():
    return asyncio.run(_current())


def _config(tree):
    from alembic.config import Config
    cfg = Config(os.path.join(tree, 'alembic.ini'))
    cfg.set_main_option('script_location', os.path.join(tree, 'alembic'))
    return cfg


def plan(tree):
    from alembic.script import ScriptDirectory
    script = ScriptDirectory.from_config(_config(tree))
    cur = current()
    known = [r for r in cur if _known(script, r)]
    heads = list(script.get_heads())
    pending = []
    if len(known) == len(cur):
        for rev in script.iterate_revisions(heads, cur or None):
            pending.append({'revision': rev.revision, 'doc': (rev.doc or '').strip().splitlines()[0] if rev.doc else ''})
        pending.reverse()
    return {'current': cur, 'heads': heads, 'pending': pending, 'known': known}


def _known(script, rev):
    try:
        return script.get_revision(rev) is not None
    except Exception:  # alembic raises several kinds for an unknown revision
        return False


async def _hold_lock():
    import asyncpg
    conn = await asyncpg.connect(_asyncpg_dsn())
    await conn.execute('SELECT pg_advisory_lock($1)', LOCK_KEY)
    return conn


def upgrade(tree):
    from alembic import command
    before = current()
    env_py = open(os.path.join(tree, 'alembic', 'env.py')).read()
    takes_lock = str(LOCK_KEY) in env_py or hex(LOCK_KEY)[2:].lower() in env_py.lower()
    loop = asyncio.new_event_loop()
    lock_conn = None if takes_lock else loop.run_until_complete(_hold_lock())
    try:
        command.upgrade(_config(tree), 'head')
        error = None
    except Exception as exc:  # any migration failure is reported, never a traceback with the URL
        error = scrubbed('%s: %s' % (type(exc).__name__, exc))
    finally:
        if lock_conn is not None:
            loop.run_until_complete(lock_conn.close())
        loop.close()
    after = current()
    out = {'before': before, 'after': after, 'lock': 'env.py' if takes_lock else 'held by cullis-migrate'}
    if error:
        out['error'] = error[:2000]
        return out, 1
    return out, 0


def main():
    args = sys.argv[1:]
    env_file = args[args.index('--env-file') + 1]
    tree = os.path.abspath(args[args.index('--tree') + 1])
    action = args[-1]
    os.environ.update(read_env(env_file))
    os.chdir(tree)
    sys.path.insert(0, tree)
    if action == 'plan':
        out, rc = plan(tree), 0
    elif action == 'current':
        out, rc = {'current': current()}, 0
    elif action == 'upgrade':
        out, rc = upgrade(tree)
    else:
        out, rc = {'error': 'unknown action %s' % action}, 2
    sys.stdout.write(json.dumps(out) + '\n')
    return rc


def scrubbed(text):
    for key in ('DATABASE_URL', 'POSTGRES_PASSWORD'):
        if os.environ.get(key):
            text = text.replace(os.environ[key], '***')
    return text


if __name__ == '__main__':
    try:
        sys.exit(main())
    except Exception as exc:  # a clean, secret-free error instead of a traceback
        sys.stdout.write(json.dumps({'error': scrubbed('%s: %s' % (type(exc).__name__, exc))[:2000]}) + '\n')
        sys.exit(1)
