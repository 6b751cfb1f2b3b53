# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the Vault/OpenBao HTTP connection shared by the vault_* modules.

Not a public API of the collection. Standard library only (http.client + ssl): the modules talk
to the Vault HTTP API directly, so nothing (no hvac) is needed on the target. Also holds the
pure logic of unsealing (keys-file parsing, key de-duplication, planning) so it can be unit
tested without a server.

Secrets (tokens, unseal keys) are sent in headers/bodies only; they never appear in an error
message produced here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import json
import os
import re
import socket
import ssl
import time

try:  # Python 3
    import http.client as http_client
    from urllib.parse import urlsplit
except ImportError:  # pragma: no cover - Python 2 is not supported
    http_client = None

from ansible.module_utils.basic import env_fallback
from ansible_collections.cullis.broker.plugins.module_utils._secret_file import (
    SecretFileError, check_secret_file)

ADDR_ENV = ['VAULT_ADDR', 'BAO_ADDR']
CACERT_ENV = ['VAULT_CACERT', 'BAO_CACERT']


def vault_argument_spec():
    """Options of plugins/doc_fragments/vault.py, for AnsibleModule(argument_spec=...).

    Environment fallbacks are evaluated by AnsibleModule when the module runs, not at import.
    """
    return dict(
        url=dict(type='list', elements='str', required=True, aliases=['addr'],
                 fallback=(env_fallback, ADDR_ENV)),
        ca_cert=dict(type='path', aliases=['cacert'], fallback=(env_fallback, CACERT_ENV)),
        validate_certs=dict(type='bool', default=True),
        timeout=dict(type='float', default=10),
        retries=dict(type='int', default=3),
        retry_delay=dict(type='float', default=0.5),
    )


class VaultError(Exception):
    """A transport-level failure (unreachable, TLS, bad URL) with an operator-friendly message.

    `kind` says which: 'unreachable' (no answer), 'tls_trust' (the node answered but its
    certificate is not trusted with ca_cert: a configuration problem, not an outage), 'tls'
    (another TLS failure) or 'config' (bad URL or CA file)."""

    def __init__(self, message, kind='unreachable'):
        super(VaultError, self).__init__(message)
        self.kind = kind


def tls_error(url, exc, ca_cert=None):
    """VaultError for an ssl.SSLError; a failed certificate verification is named a trust problem."""
    reason = getattr(exc, 'reason', None) or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError) or 'CERTIFICATE_VERIFY_FAILED' in str(exc):
        detail = getattr(exc, 'verify_message', None) or reason
        return VaultError("TLS trust problem with %s: CERTIFICATE_VERIFY_FAILED (%s) - the node answered, but its "
                          "certificate is not signed by %s. Set ca_cert (or VAULT_CACERT) to the CA that signed "
                          "Vault's certificate; nothing was sent to the node"
                          % (url, detail, ('ca_cert %s' % ca_cert) if ca_cert else 'the system trust store'),
                          kind='tls_trust')
    return VaultError("TLS error talking to %s: %s (check ca_cert / validate_certs)" % (url, reason), kind='tls')


class VaultResponse(object):
    def __init__(self, status, body):
        self.status = status
        self.body = body

    def json(self):
        try:
            return json.loads(self.body.decode('utf-8')) if self.body else {}
        except ValueError:
            return {}

    @property
    def errors(self):
        """Vault's `errors` list joined, or a short raw body. Vault never echoes tokens/keys here."""
        data = self.json()
        if isinstance(data, dict) and data.get('errors'):
            return '; '.join(str(e) for e in data['errors'])
        return self.body.decode('utf-8', 'replace')[:200]


def _is_refused(exc):
    """True when the request certainly never reached the server (safe to resend anything)."""
    return isinstance(exc, (ConnectionRefusedError,)) or (
        isinstance(exc, socket.gaierror))


class VaultClient(object):
    """HTTP(S) client for ONE Vault node (one base URL).

    `request()` retries with exponential backoff on connection errors and 5xx answers. Requests
    that are not idempotent (`idempotent=False`, e.g. submitting an unseal key) are only resent
    when the connection was refused, i.e. the server cannot have processed them.
    """

    def __init__(self, url, ca_cert=None, validate_certs=True, timeout=10.0, retries=3, retry_delay=0.5,
                 sleep=time.sleep):
        parts = urlsplit((url or '').strip().rstrip('/'))
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise VaultError("Vault url %r is not an http(s) URL (set url, VAULT_ADDR or BAO_ADDR)" % url,
                             kind='config')
        self.url = url.strip().rstrip('/')
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == 'https' else 80)
        self.prefix = parts.path.rstrip('/')
        self.timeout = timeout
        self.retries = max(0, int(retries or 0))
        self.retry_delay = retry_delay
        self._sleep = sleep
        self._ctx = None
        self.ca_cert = ca_cert
        if self.scheme == 'https':
            if validate_certs:
                if ca_cert and not os.path.isfile(ca_cert):
                    raise VaultError("ca_cert %s does not exist (set ca_cert or VAULT_CACERT to the CA file that "
                                     "signed Vault's certificate)" % ca_cert, kind='config')
                try:
                    self._ctx = ssl.create_default_context(cafile=ca_cert) if ca_cert \
                        else ssl.create_default_context()
                except (ssl.SSLError, OSError) as e:
                    raise VaultError("ca_cert %s is not a usable PEM CA file: %s" % (ca_cert, e), kind='config')
            else:
                self._ctx = ssl.create_default_context()
                self._ctx.check_hostname = False
                self._ctx.verify_mode = ssl.CERT_NONE

    def _connection(self):
        if self.scheme == 'https':
            return http_client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ctx)
        return http_client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method, path, body=None, token=None, idempotent=True, retry_5xx=True):
        """Send one request to /v1/<path>; return a VaultResponse for any HTTP status.

        Raises VaultError when the node cannot be reached after the retries, or on a TLS error
        (not retried: a wrong CA does not fix itself).
        """
        headers = {'Accept': 'application/json'}
        if token:
            headers['X-Vault-Token'] = token
        data = None
        if body is not None:
            data = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = 'application/json'
        target = '%s/v1/%s' % (self.prefix, path.lstrip('/'))
        attempt = 0
        while True:
            attempt += 1
            conn = self._connection()
            try:
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                result = VaultResponse(resp.status, resp.read())
            except ssl.SSLError as e:
                raise tls_error(self.url, e, self.ca_cert)
            except (socket.timeout, OSError, http_client.HTTPException) as e:
                if attempt > self.retries or not (idempotent or _is_refused(e)):
                    raise VaultError("Vault node %s is unreachable: %s" % (self.url, e))
                self._sleep(self.retry_delay * (2 ** (attempt - 1)))
                continue
            finally:
                conn.close()
            if result.status >= 500 and retry_5xx and idempotent and attempt <= self.retries:
                self._sleep(self.retry_delay * (2 ** (attempt - 1)))
                continue
            return result

    # ---- read-only helpers -------------------------------------------------------------------

    def seal_status(self):
        resp = self.request('GET', 'sys/seal-status')
        if resp.status != 200:
            raise VaultError("%s: sys/seal-status answered HTTP %s: %s" % (self.url, resp.status, resp.errors), kind='http')
        return resp.json()

    def health(self):
        """sys/health with every state mapped to HTTP 200, so 5xx means a real server error."""
        resp = self.request('GET', 'sys/health?standbyok=true&perfstandbyok=true&sealedcode=200'
                                   '&uninitcode=200&drsecondarycode=200&performancestandbycode=200')
        data = resp.json() if resp.status == 200 else {}
        return resp.status, data

    def leader(self):
        """sys/leader, or {} when the node cannot answer it (sealed nodes answer 503)."""
        resp = self.request('GET', 'sys/leader', retry_5xx=False)
        return resp.json() if resp.status == 200 else {}


def clients_from_module(module):
    """One VaultClient per entry of the `url` option; fails the module on a bad URL or CA."""
    p = module.params
    urls = [u for u in (p.get('url') or []) if u and u.strip()]
    if not urls:
        module.fail_json(msg="no Vault address: set url (or VAULT_ADDR / BAO_ADDR)")
    clients = []
    for url in urls:
        try:
            clients.append(VaultClient(url, ca_cert=p.get('ca_cert'), validate_certs=p.get('validate_certs', True),
                                       timeout=p.get('timeout') or 10, retries=p.get('retries', 3),
                                       retry_delay=p.get('retry_delay', 0.5)))
        except VaultError as e:
            module.fail_json(msg=str(e))
    return clients


def active_client(clients):
    """The node of `clients` to act on the cluster through (vault_snapshot): the active node (the raft
    leader) when one of them is; else the first unsealed standby (it forwards to the active node); else
    the first that answers.

    Raises VaultError naming every node's problem when none answers."""
    if len(clients) == 1:
        return clients[0]
    answering = unsealed = None
    errors = []
    for client in clients:
        try:
            status = client.seal_status()
        except VaultError as e:
            errors.append(str(e))
            continue
        answering = answering or client
        if status.get('sealed'):
            continue
        try:
            if client.leader().get('is_self'):
                return client
        except VaultError as e:
            errors.append(str(e))
        unsealed = unsealed or client
    if unsealed or answering:
        return unsealed or answering
    raise VaultError("no Vault node answered: %s" % '; '.join(errors))


# ---- node reports ----------------------------------------------------------------------------

STATUS_FIELDS = ('initialized', 'sealed', 't', 'n', 'progress', 'version', 'cluster_name', 'cluster_id',
                 'build_date', 'storage_type', 'migration', 'recovery_seal', 'type')


def node_report(url, seal_status=None, leader=None, health=None, error=None, error_kind=None):
    """The per-node dictionary every vault_* module returns (no secrets in it).
    `error_kind` is VaultError.kind ('unreachable', 'tls_trust', ...) when `error` is set."""
    st = seal_status or {}
    report = dict(
        url=url,
        reachable=error is None,
        error=error,
        error_kind=(error_kind or 'unreachable') if error is not None else None,
        initialized=st.get('initialized'),
        sealed=st.get('sealed'),
        progress=st.get('progress'),
        threshold=st.get('t'),
        shares=st.get('n'),
        version=st.get('version'),
        cluster_name=st.get('cluster_name'),
        seal_type=st.get('type'),
        storage_type=st.get('storage_type'),
    )
    ld = leader or {}
    report['ha_enabled'] = ld.get('ha_enabled')
    report['is_leader'] = ld.get('is_self')
    report['leader_address'] = ld.get('leader_address') or None
    report['leader_cluster_address'] = ld.get('leader_cluster_address') or None
    report['active_time'] = ld.get('active_time')
    if health is not None:
        report['health'] = health
    return report


def health_state(code, data):
    """A one-word health summary from a sys/health answer (all codes mapped to 200)."""
    if code != 200 or not isinstance(data, dict) or not data:
        return 'error'
    if not data.get('initialized'):
        return 'uninitialized'
    if data.get('sealed'):
        return 'sealed'
    if data.get('standby'):
        return 'perfstandby' if data.get('performance_standby') else 'standby'
    return 'active'


# ---- unseal keys -----------------------------------------------------------------------------

KEY_FIELDS = ('unseal_keys_b64', 'keys_base64', 'unseal_keys_hex', 'keys')


class KeysError(Exception):
    """A problem with the unseal keys or keys file; the message never contains a key."""


def check_keys_file_mode(path, insecure=False):
    """Refuse a keys file readable or writable by group/others unless `insecure` is true
    (the collection's one policy for secret files, module_utils._secret_file)."""
    try:
        return check_secret_file(path, 'keys_file', insecure, 'insecure_keys_file')
    except SecretFileError as e:
        raise KeysError(str(e))


def parse_keys_document(text, source='keys_file'):
    """Unseal keys from the JSON that `vault/bao operator init -format=json` writes.

    Accepts `unseal_keys_b64` (current), `keys_base64` (older Vault), then the hex variants.
    """
    try:
        data = json.loads(text)
    except ValueError:
        raise KeysError("%s is not valid JSON (expected the output of `operator init -format=json`)" % source)
    if not isinstance(data, dict):
        raise KeysError("%s must hold a JSON object with unseal_keys_b64 or keys_base64" % source)
    for field in KEY_FIELDS:
        keys = data.get(field)
        if keys:
            if not isinstance(keys, list) or not all(isinstance(k, str) and k.strip() for k in keys):
                raise KeysError("%s: %s must be a list of non-empty strings" % (source, field))
            return [k.strip() for k in keys]
    raise KeysError("%s has no unseal keys (looked for %s)" % (source, ', '.join(KEY_FIELDS)))


def read_keys_file(path, insecure=False):
    check_keys_file_mode(path, insecure)
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, IOError) as e:
        raise KeysError("cannot read keys_file %s: %s" % (path, getattr(e, 'strerror', None) or e))
    return parse_keys_document(text, source='keys_file %s' % path)


def read_root_token(path, insecure=False):
    """The `root_token` of an `operator init -format=json` document (for vault_token's admin)."""
    check_keys_file_mode(path, insecure)
    with open(path) as f:
        try:
            data = json.loads(f.read())
        except ValueError:
            raise KeysError("keys_file %s is not valid JSON" % path)
    token = data.get('root_token') if isinstance(data, dict) else None
    if not token:
        raise KeysError("keys_file %s has no root_token" % path)
    return token


_HEX = re.compile(r'^[0-9a-fA-F]+$')


def normalize_key(key):
    """The raw share bytes of a key given in hex or base64 (Vault accepts both)."""
    key = key.strip()
    if len(key) % 2 == 0 and _HEX.match(key):
        try:
            return binascii.unhexlify(key)
        except (binascii.Error, TypeError):
            pass
    try:
        return base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None


def dedupe_keys(keys):
    """Distinct keys in input order.

    Returns (unique, skipped): `unique` is a list of (position, key) with 1-based positions in
    the input; `skipped` lists (position, first_position) of duplicates (same share, even in a
    different encoding). A key that is neither hex nor base64 is kept: Vault will reject it and
    the module reports its position.
    """
    seen = {}
    unique, skipped = [], []
    for pos, key in enumerate(keys, 1):
        norm = normalize_key(key)
        ident = norm if norm is not None else ('raw', key.strip())
        if ident in seen:
            skipped.append((pos, seen[ident]))
            continue
        seen[ident] = pos
        unique.append((pos, key))
    return unique, skipped


def plan_unseal(status, n_keys):
    """What unsealing one node needs, from its seal-status and the number of distinct keys.

    Returns a dict: action in {'none', 'unseal', 'impossible', 'uninitialized'}, `reset`
    (a stale partial unseal must be reset first), `submit` (keys to submit), `reason`.
    """
    if status.get('initialized') is False:
        return dict(action='uninitialized', reset=False, submit=0,
                    reason='node is not initialized: run operator init first')
    if not status.get('sealed'):
        return dict(action='none', reset=False, submit=0, reason='already unsealed')
    threshold = int(status.get('t') or 0)
    progress = int(status.get('progress') or 0)
    if threshold <= 0:
        return dict(action='impossible', reset=False, submit=0,
                    reason='node reports no key threshold (not initialized or not a Shamir seal)')
    if n_keys < threshold:
        return dict(action='impossible', reset=progress > 0, submit=0,
                    reason='%d distinct key(s) given, the threshold is %d' % (n_keys, threshold))
    # A partial unseal left by someone else: we cannot know which shares it holds, and
    # re-submitting one of them would be rejected, so start from a clean state.
    return dict(action='unseal', reset=progress > 0, submit=threshold,
                reason='sealed, %d of %d keys needed' % (threshold, threshold))


# ---- durations -------------------------------------------------------------------------------

_DURATION = re.compile(r'(\d+(?:\.\d+)?)(ms|s|m|h|d)?')
_UNITS = {'ms': 0.001, 's': 1, 'm': 60, 'h': 3600, 'd': 86400, None: 1}


def duration_seconds(value):
    """Seconds in a Vault-style duration: 3600, '3600', '90s', '30m', '72h', '1h30m', '7d'."""
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().lower()
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError("%r is not a duration like 3600, 90s, 30m, 72h or 7d" % value)
    return int(total)
