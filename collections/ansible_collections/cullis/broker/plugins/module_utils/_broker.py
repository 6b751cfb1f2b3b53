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
import socket
import ssl
import threading

try:  # Python 3
    import http.client as http_client
    from urllib.parse import urlencode, urlsplit, quote
except ImportError:  # pragma: no cover - Python 2 is not supported by the broker either
    http_client = None

from ansible.module_utils.basic import env_fallback


def broker_argument_spec(admin_secret_required=False):
    """Options of plugins/doc_fragments/broker.py, for AnsibleModule(argument_spec=...)."""
    return dict(
        broker_url=dict(type='str', required=True, fallback=(env_fallback, ['CULLIS_BROKER_URL'])),
        admin_secret=dict(type='str', no_log=True, required=admin_secret_required,
                          fallback=(env_fallback, ['CULLIS_ADMIN_SECRET'])),
        ca_path=dict(type='path', aliases=['ca_cert'], fallback=(env_fallback, ['CULLIS_CA_PATH'])),
        validate_certs=dict(type='bool', default=True),
        timeout=dict(type='float', default=10),
    )


class BrokerError(Exception):
    """A transport-level failure (unreachable, TLS) with a message fit for an operator."""


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
    """Keep-alive HTTP(S) client for one broker base URL; safe to share between threads."""

    def __init__(self, base_url, admin_secret=None, ca_path=None, validate_certs=True, timeout=10.0):
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
                       validate_certs=p.get('validate_certs', True), timeout=p.get('timeout') or 10)
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

    def request(self, method, path, body=None, headers=None, admin=False, query=None):
        """Send one request; returns BrokerResponse for any HTTP status, raises BrokerError otherwise.

        A request on a reused connection that the server closed meanwhile is retried once on a new one.
        """
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
                    raise BrokerError("%s %s%s: connection lost (%s)" % (method, self.base_url, path, e))
            except ssl.SSLError as e:
                self.close()
                raise BrokerError("TLS error talking to %s: %s (check ca_path / validate_certs)"
                                  % (self.base_url, getattr(e, 'reason', None) or e))
            except (socket.timeout, OSError) as e:
                self.close()
                raise BrokerError("broker %s is unreachable: %s" % (self.base_url, e))

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
