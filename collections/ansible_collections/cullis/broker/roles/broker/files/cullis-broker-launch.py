# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Launcher of the broker under the process runtime (installed by the cullis.broker.broker role).

usage: launch.py --env-file FILE [--memory-limit-mb N] [--cgroup-name NAME] [--state-file F] -- CMD...

Reads the stack's .env on every start (so a rotated VAULT_TOKEN or ADMIN_SECRET in .env takes
effect at the next restart, as with `docker compose up -d`), exports it as real process
environment variables (the broker's migration runner needs DATABASE_URL in the environment),
applies the memory limit, then exec()s CMD: the PID supervisord watches is the broker's own.

Memory limit: a memory cgroup (v2 `memory.max`, else v1 `memory.limit_in_bytes`) below the
launcher's own cgroup, so going over it gets the broker OOM-killed (SIGKILL, the compose
runtime's "Exit 137"); when no writable cgroup exists, RLIMIT_AS (allocations fail instead).
Never prints a value from .env.
"""
import argparse
import os
import resource
import sys


def read_env(path):
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#') or '=' not in line:
                continue
            key, dummy, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in '"\'':
                value = value[1:-1]
            values[key.strip()] = value
    return values


def _cgroup_dirs(name):
    """Candidate (dir, limit_file) pairs for a child cgroup `name` of our own cgroup."""
    found = []
    try:
        with open('/proc/self/cgroup') as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2]
        if controllers == '' and os.path.exists('/sys/fs/cgroup/cgroup.controllers'):
            found.append((os.path.join('/sys/fs/cgroup' + path, name), 'memory.max'))
        elif 'memory' in controllers.split(','):
            found.append((os.path.join('/sys/fs/cgroup/memory' + path, name), 'memory.limit_in_bytes'))
    return found


def limit_memory(mb, cgroup_name, state_file):
    limit = int(mb) * 1024 * 1024
    for directory, limit_file in _cgroup_dirs(cgroup_name):
        try:
            if not os.path.isdir(directory):
                os.mkdir(directory)
            with open(os.path.join(directory, limit_file), 'w') as f:
                f.write(str(limit))
            if limit_file == 'memory.limit_in_bytes' and os.path.exists(os.path.join(directory, 'memory.memsw.limit_in_bytes')):
                try:
                    with open(os.path.join(directory, 'memory.memsw.limit_in_bytes'), 'w') as f:
                        f.write(str(limit))
                except OSError:
                    pass
            with open(os.path.join(directory, 'cgroup.procs'), 'w') as f:
                f.write(str(os.getpid()))
        except OSError:
            continue
        if state_file:
            with open(state_file, 'w') as f:
                f.write(directory + '\n')
        sys.stderr.write('cullis-launch: memory limit %d MB via cgroup %s\n' % (mb, directory))
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.stderr.write('cullis-launch: memory limit %d MB via RLIMIT_AS (no writable memory cgroup)\n' % mb)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--env-file', required=True)
    parser.add_argument('--memory-limit-mb', type=int, default=0)
    parser.add_argument('--cgroup-name', default='cullis-broker')
    parser.add_argument('--state-file')
    parser.add_argument('command', nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        parser.error('no command given')
    try:
        os.environ.update(read_env(args.env_file))
    except OSError as exc:
        sys.stderr.write('cullis-launch: cannot read %s: %s\n' % (args.env_file, exc.strerror))
        sys.exit(1)
    if args.memory_limit_mb > 0:
        limit_memory(args.memory_limit_mb, args.cgroup_name, args.state_file)
    sys.stderr.flush()
    os.execv(command[0], command)


if __name__ == '__main__':
    main()
