# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the facts of a Cullis stack as seen ON the host that runs it.

Not a public API of the collection. Backend of the `stack_info` module: layout of the stack
directory, the runtime and its services, disk usage, the non-secret settings of the host's .env
and (only when asked) its secrets, so playbooks never read a stack file with a controller-side
lookup.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.cullis.broker.plugins.module_utils._broker import read_env_file
from ansible_collections.cullis.broker.plugins.module_utils._disk import filesystem_usage
from ansible_collections.cullis.broker.plugins.module_utils._redact import SECRET_KEY_RE
from ansible_collections.cullis.broker.plugins.module_utils._runtime import RuntimeErrorCullis, get_runtime

# stack-dir relative paths reported in `layout` (present or not)
LAYOUT = dict(
    logs='logs',
    tls_dir='tls',
    ca_cert='tls/ca.pem',
    supervisor_conf='supervisor/supervisord.conf',
    postgres_dir='postgres',
    redis_dir='redis',
    vault_dir='vault',
    broker_dir='broker',
    nginx_dir='nginx',
    backups='backups',
    reports='reports',
)


def split_env(env):
    """(settings, secrets) of a parsed .env: secret-looking keys (and URLs with credentials) apart."""
    settings, secrets = {}, {}
    for key, value in env.items():
        (secrets if SECRET_KEY_RE.search(key) else settings)[key] = value
    return settings, secrets


def disk_usage(path):
    """Usage of the filesystem holding `path` (nearest existing parent), as module_utils/_disk.py
    defines it for every module; None when it cannot be read."""
    try:
        return filesystem_usage(path)
    except OSError:
        return None


def gather(stack_dir, env_file=None, runtime='process', services=None, timeout=30.0, with_secrets=False,
           runtime_options=None):
    """Everything `stack_info` returns (secrets only when `with_secrets`)."""
    stack_dir = os.path.abspath(stack_dir)
    env_file = env_file or os.path.join(stack_dir, '.env')
    layout = dict(stack_dir=stack_dir, stack_dir_exists=os.path.isdir(stack_dir), env_file=env_file,
                  env_file_exists=os.path.isfile(env_file))
    for key, rel in LAYOUT.items():
        path = os.path.join(stack_dir, rel)
        layout[key] = dict(path=path, exists=os.path.exists(path))

    env = read_env_file(env_file)
    settings, secrets = split_env(env)

    rt_info = dict(kind=runtime, daemon_running=False, error=None)
    states = {}
    try:
        rt = get_runtime(runtime, stack_dir, timeout=timeout, **(runtime_options or {}))
        rt_info['daemon_running'] = rt.daemon_running()
        names = services if services else (rt.services() if rt_info['daemon_running'] else [])
        for name in names:
            st = rt.status(name)
            states[name] = dict(state=st['state'], running=st['running'], pid=st['pid'], uptime=st['uptime'],
                                exitstatus=st['exitstatus'], logfile=st['logfile'] or rt.logfile(name))
    except RuntimeErrorCullis as exc:
        rt_info['error'] = str(exc)

    result = dict(layout=layout, runtime=rt_info, services=states, settings=settings,
                  secret_keys=sorted(secrets), disk=disk_usage(stack_dir))
    if with_secrets:
        result['secrets'] = secrets
    return result
