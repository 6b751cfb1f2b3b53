#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: redis_ping
short_description: PING the stack's Redis with the password from the broker's .env (read-only)
version_added: 0.1.0
description:
  - Connects to Redis, authenticates with the password the broker uses, and sends C(PING).
  - Tells apart the three cases of runbook section 4 -
    V(down) (connection refused / timeout),
    V(wrong_password) (Redis rejects the C(.env) password, or requires one and none is set),
    and V(ok) (C(PONG)).
  - The password is taken from O(password), else from O(env_file) (C(REDIS_URL), then C(REDIS_PASSWORD)).
    It is never returned or logged.
  - Standard library only (no C(redis) Python package needed on the target), unlike
    M(community.general.redis_info), which also fails outright on an auth error instead of
    classifying it.
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.info_module
options:
  host:
    description: Redis host.
    type: str
    default: 127.0.0.1
  port:
    description: Redis port. Defaults to the port in C(REDIS_URL) of O(env_file), else 6379.
    type: int
  password:
    description: Redis password. Overrides O(env_file).
    type: str
  env_file:
    description: The stack's C(.env); C(REDIS_URL) or C(REDIS_PASSWORD) supply the password. A missing file is reported as a warning.
    type: path
  timeout:
    description: Seconds for connect and reply.
    type: float
    default: 3
"""

EXAMPLES = r"""
- name: Can the broker's password reach Redis?
  cullis.broker.redis_ping:
    port: "{{ cullis_redis_port }}"
    env_file: "{{ cullis_env_file }}"
  register: redis

- ansible.builtin.debug:
    msg: "redis: {{ redis.state }} ({{ redis.detail }})"
"""

RETURN = r"""
state:
  description: V(ok), V(down), V(wrong_password), V(no_password_configured) or V(error).
  type: str
  returned: always
  sample: ok
pong:
  description: Redis answered C(PONG).
  type: bool
  returned: always
detail:
  description: The Redis error or transport error text (without the password).
  type: str
  returned: always
latency_ms:
  description: Time from connect to C(PONG) in milliseconds.
  type: float
  returned: always
host:
  description: The Redis host that was pinged (O(host)).
  type: str
  returned: always
port:
  description: The port that was pinged (O(port), else the port of C(REDIS_URL) in O(env_file), else 6379).
  type: int
  returned: always
password_source:
  description: Where the password came from (V(option), V(REDIS_URL), V(REDIS_PASSWORD), V(none)).
  type: str
  returned: always
"""

import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._broker import read_env_file
from ansible_collections.cullis.broker.plugins.module_utils._redact import protect, scrub

try:
    from urllib.parse import urlsplit, unquote
except ImportError:  # pragma: no cover
    urlsplit = None


def password_from_env(env):
    """(password, port, source) from a parsed .env."""
    url = env.get('REDIS_URL')
    if url:
        parts = urlsplit(url)
        pw = unquote(parts.password) if parts.password else None
        if pw:
            return pw, parts.port, 'REDIS_URL'
        if env.get('REDIS_PASSWORD'):
            return env['REDIS_PASSWORD'], parts.port, 'REDIS_PASSWORD'
        return None, parts.port, 'none'
    if env.get('REDIS_PASSWORD'):
        return env['REDIS_PASSWORD'], None, 'REDIS_PASSWORD'
    return None, None, 'none'


def _resp(*args):
    out = b'*%d\r\n' % len(args)
    for a in args:
        a = a.encode('utf-8') if not isinstance(a, bytes) else a
        out += b'$%d\r\n%s\r\n' % (len(a), a)
    return out


def _read_line(f):
    line = f.readline()
    if not line:
        raise EOFError('connection closed by Redis')
    return line.rstrip(b'\r\n').decode('utf-8', 'replace')


def classify_error(text):
    t = text.upper()
    if 'WRONGPASS' in t or 'INVALID PASSWORD' in t or 'INVALID USERNAME-PASSWORD' in t:
        return 'wrong_password'
    if 'NOAUTH' in t:
        return 'no_password_configured'
    if 'WITHOUT ANY PASSWORD CONFIGURED' in t:
        # AUTH sent to a Redis that has no requirepass: Redis and .env disagree too
        return 'wrong_password'
    return 'error'


def ping(host, port, password, timeout):
    t0 = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (socket.timeout, OSError) as e:
        return {'state': 'down', 'pong': False, 'detail': 'cannot connect to %s:%s: %s' % (host, port, e),
                'latency_ms': None}
    try:
        f = sock.makefile('rb')
        if password:
            sock.sendall(_resp('AUTH', password))
            line = _read_line(f)
            if line.startswith('-'):
                return {'state': classify_error(line), 'pong': False, 'detail': line[1:], 'latency_ms': None}
        sock.sendall(_resp('PING'))
        line = _read_line(f)
        ms = round((time.monotonic() - t0) * 1000, 1)
        if line.startswith('-'):
            return {'state': classify_error(line), 'pong': False, 'detail': line[1:], 'latency_ms': ms}
        pong = line in ('+PONG', 'PONG')
        return {'state': 'ok' if pong else 'error', 'pong': pong, 'detail': line.lstrip('+'), 'latency_ms': ms}
    except (socket.timeout, OSError, EOFError) as e:
        return {'state': 'down', 'pong': False, 'detail': 'no reply from %s:%s: %s' % (host, port, e),
                'latency_ms': None}
    finally:
        sock.close()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type='str', default='127.0.0.1'),
            port=dict(type='int'),
            password=dict(type='str', no_log=True),
            env_file=dict(type='path'),
            timeout=dict(type='float', default=3),
        ),
        supports_check_mode=True,
    )
    p = module.params
    password, port, source = None, None, 'none'
    if p['env_file']:
        if not os.path.isfile(p['env_file']):
            module.warn("env_file %s does not exist (the stack's .env, cullis_env_file): no password from it"
                        % p['env_file'])
        password, port, source = password_from_env(read_env_file(p['env_file']))
    if p['password']:
        password, source = p['password'], 'option'
    port = p['port'] or port or 6379
    if source in ('REDIS_URL', 'REDIS_PASSWORD'):
        protect(module, password)  # read from a file: Ansible masks it like a no_log option
    result = ping(p['host'], port, password, p['timeout'])
    result['detail'] = scrub(result.get('detail'), [password] if password else [])
    module.exit_json(changed=False, password_source=source, host=p['host'], port=port, **result)


if __name__ == '__main__':
    main()
