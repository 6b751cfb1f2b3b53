# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the broker HTTP connection shared by every broker-facing module.

Not a public API of the collection; modules import it, playbooks never see it. Standard
library only (http.client + ssl), so modules run on any target without extra packages, and one
`BrokerClient` keeps one keep-alive connection per thread for bulk work.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import random
import re
import socket
import ssl
import threading
import time

try:  # Python 3
    import http.client as http_client
    from urllib.parse import urlencode, urlsplit, quote
except ImportError:  # pragma: no cover - Python 2 is not supported by the broker either
    http_client = None

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.common.parameters import AnsibleFallbackNotFound


def nonempty_env_fallback(*names):
    """env_fallback that treats an empty variable as unset (so `required` still catches it)."""
    value = env_fallback(*names)
    if not value:
        raise AnsibleFallbackNotFound
    return value


def broker_argument_spec(admin_secret_required=False):
    """Options of plugins/doc_fragments/broker.py, for AnsibleModule(argument_spec=...).

    admin_secret_required=True for modules that only make admin calls; document them with the
    cullis.broker.broker.admin_required fragment (listed before cullis.broker.broker).
    """
    return dict(
        broker_url=dict(type='str', required=True, fallback=(env_fallback, ['CULLIS_BROKER_URL'])),
        admin_secret=dict(type='str', no_log=True, required=admin_secret_required,
                          fallback=(nonempty_env_fallback, ['CULLIS_ADMIN_SECRET'])),
        ca_path=dict(type='path', aliases=['ca_cert'], fallback=(env_fallback, ['CULLIS_CA_PATH'])),
        validate_certs=dict(type='bool', default=True),
        timeout=dict(type='float', default=10),
        retries=dict(type='int', default=3),
        retry_action=dict(type='str', default='warn', choices=['warn', 'ignore']),
    )


# Broker writes that are safe to repeat (contract broker-api.md section 3): repeating one after a
# 5xx or a lost connection either does it now or finds it done (200 again, or 409 "already ...").
# Real brokers answer 500 to concurrent writes for one org and roll them back (section 6, point 20).
IDEMPOTENT_WRITES = (
    ('POST', re.compile(r'^/v1/registry/bindings/\d+/revoke$')),
    ('POST', re.compile(r'^/v1/admin/certs/revoke$')),
    ('POST', re.compile(r'^/v1/auth/revoke-agent/[^/]+$')),
    ('POST', re.compile(r'^/v1/admin/orgs/[^/]+/(suspend|reactivate|approve)$')),
)
RETRY_STATUSES = (500, 502, 503, 504)
RETRY_BASE_DELAY = 0.5   # seconds; doubled per attempt, +-50 % jitter
RETRY_MAX_DELAY = 5.0    # cap of one wait


def is_idempotent_write(method, path):
    return any(method == m and rx.match(path) for m, rx in IDEMPOTENT_WRITES)


def retry_delay(attempt):
    """Bounded exponential backoff with jitter before retry number `attempt` (1, 2, ...)."""
    base = min(RETRY_BASE_DELAY * (2 ** (attempt - 1)), RETRY_MAX_DELAY)
    return base * random.uniform(0.5, 1.5)


class BrokerError(Exception):
    """A transport-level failure (unreachable, TLS) with a message fit for an operator.

    `retryable` is true for connection failures (refused, reset, timeout), false for TLS errors.
    """

    def __init__(self, msg, retryable=False):
        super(BrokerError, self).__init__(msg)
        self.retryable = retryable


class BrokerResponse(object):
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body.decode('utf-8')) if self.body else None
        except ValueError:
            return None

    @property
    def detail(self):
        """The broker's error `detail` string (or the raw body when it is not JSON)."""
        data = self.json()
        if isinstance(data, dict) and 'detail' in data:
            return data['detail'] if isinstance(data['detail'], str) else json.dumps(data['detail'])
        return self.body.decode('utf-8', 'replace')[:500]


class BrokerClient(object):
    """Keep-alive HTTP(S) client for one broker base URL; safe to share between threads.

    Idempotent writes (IDEMPOTENT_WRITES, or `request(..., idempotent=True)`) that get a 5xx or a
    connection error are sent again up to `retries` times with bounded backoff; every retry is
    recorded in `.retried` (for the module result) and, with `warn`, reported as a warning.
    """

    def __init__(self, base_url, admin_secret=None, ca_path=None, validate_certs=True, timeout=10.0,
                 retries=0, warn=None):
        parts = urlsplit(base_url.rstrip('/'))
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise BrokerError("broker_url %r is not an http(s) URL" % base_url)
        self.base_url = base_url.rstrip('/')
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == 'https' else 80)
        self.prefix = parts.path.rstrip('/')
        self.admin_secret = admin_secret
        self.timeout = timeout
        self.retries = max(0, int(retries or 0))
        self.retried = []
        self._warn = warn
        self._retry_lock = threading.Lock()
        self._local = threading.local()
        self._ssl = None
        if self.scheme == 'https':
            if validate_certs:
                if ca_path and not os.path.isfile(ca_path):
                    raise BrokerError("ca_path %s does not exist (set ca_path or CULLIS_CA_PATH to the PEM CA file "
                                      "that signed the broker's certificate)" % ca_path)
                try:
                    self._ssl = ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()
                except (ssl.SSLError, OSError) as e:
                    raise BrokerError("ca_path %s is not a usable PEM CA file: %s" % (ca_path, e))
            else:
                self._ssl = ssl.create_default_context()
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE

    @classmethod
    def from_module(cls, module):
        p = module.params
        try:
            return cls(p['broker_url'], admin_secret=p.get('admin_secret'), ca_path=p.get('ca_path'),
                       validate_certs=p.get('validate_certs', True), timeout=p.get('timeout') or 10,
                       retries=p.get('retries') or 0,
                       warn=module.warn if p.get('retry_action', 'warn') == 'warn' else None)
        except BrokerError as e:
            module.fail_json(msg=str(e))

    def _conn(self):
        conn = getattr(self._local, 'conn', None)
        if conn is None:
            if self.scheme == 'https':
                conn = http_client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http_client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self):
        conn = getattr(self._local, 'conn', None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method, path, body=None, headers=None, admin=False, query=None, idempotent=None):
        """Send one request; returns BrokerResponse for any HTTP status, raises BrokerError otherwise.

        A request on a reused connection that the server closed meanwhile is retried once on a new one.
        An idempotent write (`idempotent=None`: decided by IDEMPOTENT_WRITES) is also retried on a
        5xx answer or a connection error, `self.retries` times at most, with bounded backoff.
        """
        if idempotent is None:
            idempotent = is_idempotent_write(method, path)
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(1, attempts + 1):
            try:
                resp = self._send(method, path, body, headers, admin, query)
            except BrokerError as e:
                if not e.retryable or attempt == attempts:
                    raise
                outcome = str(e)
            else:
                if resp.status not in RETRY_STATUSES or attempt == attempts:
                    return resp
                outcome = "HTTP %s %s" % (resp.status, resp.detail[:200])
            delay = retry_delay(attempt)
            self._record_retry(method, path, attempt, attempts - 1, outcome, delay)
            time.sleep(delay)

    def _record_retry(self, method, path, attempt, retries, outcome, delay):
        entry = dict(method=method, path=path, retry=attempt, outcome=outcome, delay=round(delay, 2))
        with self._retry_lock:
            self.retried.append(entry)
        if self._warn:
            self._warn("%s %s: %s; retry %d of %d in %.1f s (the write is idempotent)"
                       % (method, path, outcome, attempt, retries, delay))

    def _send(self, method, path, body, headers, admin, query):
        hdrs = {'Accept': 'application/json'}
        if admin:
            if not self.admin_secret:
                raise BrokerError("admin_secret is required for %s %s" % (method, path))
            hdrs['x-admin-secret'] = self.admin_secret
        data = None
        if body is not None:
            data = json.dumps(body).encode('utf-8')
            hdrs['Content-Type'] = 'application/json'
        if headers:
            hdrs.update(headers)
        url = self.prefix + path
        if query:
            url += '?' + urlencode(query)
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, url, body=data, headers=hdrs)
                resp = conn.getresponse()
                payload = resp.read()
                return BrokerResponse(resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), payload)
            except (http_client.RemoteDisconnected, http_client.BadStatusLine, BrokenPipeError,
                    ConnectionResetError) as e:
                self.close()
                if attempt == 2:
                    raise BrokerError("%s %s%s: connection lost (%s)" % (method, self.base_url, path, e),
                                      retryable=True)
            except ssl.SSLError as e:
                self.close()
                raise BrokerError("TLS error talking to %s: %s (check ca_path / validate_certs)"
                                  % (self.base_url, getattr(e, 'reason', None) or e))
            except (socket.timeout, OSError) as e:
                self.close()
                raise BrokerError("broker %s is unreachable: %s" % (self.base_url, e), retryable=True)

    def admin_get(self, path, query=None):
        return self.request('GET', path, admin=True, query=query)

    def admin_post(self, path, body=None):
        return self.request('POST', path, body=body, admin=True)


def path_quote(value):
    """Quote one path segment (org ids and agent ids may contain ':' and other characters)."""
    return quote(str(value), safe='')


def read_env_file(path):
    """Parse a KEY=VALUE .env file (no interpolation). Missing file -> {}."""
    values = {}
    if not os.path.exists(path):
        return values
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#') or '=' not in line:
                continue
            key, dummy, value = line.partition('=')
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values
