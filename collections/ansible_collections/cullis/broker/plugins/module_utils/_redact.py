# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: redact secrets from log lines before a module returns them.

Not a public API of the collection. The one scrubber of the collection: every module masks secrets
in the texts it returns with `Redactor` (or `scrub()`), and registers the secrets it reads from files
or other systems with `protect()` so that Ansible masks them too. Two layers:
  1. the values of known secrets (read from the stack's .env, plus any extra values the caller
     knows), replaced wherever they appear, also URL-encoded;
  2. patterns that carry secrets whatever their value: passwords in URLs
     (`redis://:pw@`, `postgresql+asyncpg://user:pw@`), `x-admin-secret`/`x-org-secret` headers,
     `Authorization`/`DPoP`/`X-Vault-Token` headers, `KEY=value` for secret-looking keys, JWTs and
     Vault tokens (`hvs.`/`s.`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

try:
    from urllib.parse import quote
except ImportError:  # pragma: no cover
    from urllib import quote  # type: ignore

MASK = '********'

# .env keys whose values are secrets (anything matching SECRET_KEY_RE counts too).
SECRET_KEY_RE = re.compile(r'(SECRET|PASSWORD|PASSWD|TOKEN|_KEY$|_KEY_|PRIVATE|CREDENTIAL|UNSEAL|DATABASE_URL|REDIS_URL)',
                           re.IGNORECASE)

_PATTERNS = [
    # scheme://user:password@host  and scheme://:password@host
    (re.compile(r'(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?P<post>@)'), None),
    # secret-bearing HTTP headers, in "Header: value", "'header': 'value'" and "header=value" forms
    (re.compile(r'(?P<pre>(?:x-admin-secret|x-org-secret|x-vault-token|authorization|dpop|'
                r'x-cullis-mastio-signature)["\']?\s*[:=]\s*["\']?)(?:(?:Bearer|DPoP)\s+)?(?P<secret>[^\s"\',}]+)',
                re.IGNORECASE), None),
    # KEY=value / "key": "value" for secret-looking keys
    # (the key must END with the secret word: `InvalidPasswordError: ...` is not a secret)
    (re.compile(r'(?P<pre>\b[A-Za-z_]*(?:SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE_KEY)["\']?\s*[=:]\s*["\']?)'
                r'(?P<secret>[^\s"\',}]+)', re.IGNORECASE), None),
    # JWTs (three base64url segments, the first starting with eyJ)
    (re.compile(r'(?P<pre>)(?P<secret>eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*)(?P<post>)'), None),
    # Vault / OpenBao tokens
    (re.compile(r'(?P<pre>\b)(?P<secret>(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9]{20,})(?P<post>)'), None),
    # PEM private keys
    (re.compile(r'(?P<pre>-----BEGIN [A-Z ]*PRIVATE KEY-----)(?P<secret>.*?)(?P<post>-----END [A-Z ]*PRIVATE KEY-----)',
                re.DOTALL), None),
]


def secret_values_from_env(env):
    """The secret values of a parsed .env mapping (see _broker.read_env_file)."""
    values = []
    for key, value in (env or {}).items():
        if value and SECRET_KEY_RE.search(key):
            values.append(value)
            # URLs: also the password part alone (it appears in other URLs and error texts)
            password = url_password(value)
            if password:
                values.append(password)
    return values


def url_password(value):
    """The password part of `scheme://user:password@host...` (or `password=...` of a libpq DSN), or None."""
    value = value or ''
    m = re.match(r'^[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:([^\s@/]+)@', value) or re.search(r'password=(\S+)', value)
    return m.group(1) if m else None


def protect(module, *values):
    """Register secrets a module read itself (a keys file, a .env, a DSN) in module.no_log_values.

    Ansible then masks them in everything the module returns, its warnings and its failures, as it
    does for options declared no_log. A URL also registers its password alone. Returns the first value.
    """
    for value in values:
        if not value:
            continue
        if isinstance(value, bytes):
            value = value.decode('utf-8', 'replace')
        module.no_log_values.add(str(value))
        password = url_password(str(value))
        if password:
            module.no_log_values.add(password)
    return values[0] if values else None


def scrub(text, secrets, min_length=1):
    """Mask the given secret values and secret-shaped patterns in one text (None stays None)."""
    if text is None:
        return text
    return Redactor(secrets, min_length=min_length)(str(text))


class Redactor(object):
    """Callable that masks known secret values and secret-shaped patterns in text."""

    def __init__(self, secret_values=None, min_length=4):
        vals = set()
        for v in secret_values or ():
            if v is None:
                continue
            v = str(v)
            if len(v) < min_length:
                continue
            for item in (v, url_password(v)):
                if not item or len(item) < min_length:
                    continue
                vals.add(item)
                enc = quote(item, safe='')
                if enc != item:
                    vals.add(enc)
        # longest first so a URL containing a password is masked whole
        self.values = sorted(vals, key=len, reverse=True)

    def __call__(self, text):
        if not text:
            return text
        for v in self.values:
            if v in text:
                text = text.replace(v, MASK)
        for rx, _unused in _PATTERNS:
            text = rx.sub(_mask_group, text)
        return text

    def lines(self, lines):
        return [self(line) for line in lines]


def _mask_group(m):
    secret = m.group('secret')
    if secret == MASK or set(secret) <= set('*'):
        return m.group(0)
    post = m.groupdict().get('post') or ''
    return m.group('pre') + MASK + post
