# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the broker database, for what real brokers have no API for.

Not a public API of the collection. Real Cullis brokers cannot list an org's agents, suspend an
org or invalidate tokens without org credentials over HTTP (broker-api.md sections 3, 5, 6).
These helpers make exactly the database changes the broker's own code makes (the dashboard's
suspend route, revoke-agent), nothing more. Options: plugins/doc_fragments/broker_db.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.module_utils.basic import env_fallback
from ansible_collections.cullis.broker.plugins.module_utils._redact import scrub

try:
    import psycopg2
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - reported by the module with missing_required_lib
    psycopg2 = None
    HAS_PSYCOPG2 = False


def broker_db_argument_spec():
    """Options of plugins/doc_fragments/broker_db.py."""
    return dict(
        db_dsn=dict(type='str', no_log=True, fallback=(env_fallback, ['CULLIS_DB_DSN'])),
        db_connect_timeout=dict(type='int', default=10),
    )


class BrokerDBError(Exception):
    """A database failure with a message that never contains the DSN or its password."""


_SQLA_SCHEME = re.compile(r'^postgres(?:ql)?\+[a-z0-9_]+://', re.I)


def libpq_dsn(dsn):
    """Accept the broker's own DATABASE_URL (postgresql+asyncpg://...) as well as libpq DSNs."""
    dsn = (dsn or '').strip()
    if _SQLA_SCHEME.match(dsn):
        dsn = 'postgresql://' + dsn.split('://', 1)[1]
    return dsn


def redact(text, secret):
    """Remove the DSN and any password in it from an error text (the collection's one scrubber)."""
    return scrub(text, [secret] if secret else [])


class BrokerDB(object):
    """One short-lived connection to the broker database (autocommit off; commit per change)."""

    def __init__(self, dsn, connect_timeout=10):
        if not HAS_PSYCOPG2:  # pragma: no cover
            raise BrokerDBError("the python 'psycopg2' library is needed for the database path")
        if not dsn:
            raise BrokerDBError("db_dsn is empty")
        self._dsn = libpq_dsn(dsn)
        try:
            self.conn = psycopg2.connect(self._dsn, connect_timeout=connect_timeout)
        except Exception as e:  # psycopg2.Error, or ValueError-like DSN parse errors
            raise BrokerDBError("cannot connect to the broker database (db_dsn): %s"
                                % redact(e, self._dsn).strip())

    @classmethod
    def from_module(cls, module):
        try:
            return cls(module.params.get('db_dsn'), module.params.get('db_connect_timeout') or 10)
        except BrokerDBError as e:
            module.fail_json(msg=str(e))

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass

    def _run(self, sql, args=(), fetch=True, commit=False):
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, args)
                rows = cur.fetchall() if fetch else cur.rowcount
            if commit:
                self.conn.commit()
            else:
                self.conn.rollback()
            return rows
        except Exception as e:
            try:
                self.conn.rollback()
            except Exception:
                pass
            raise BrokerDBError("broker database query failed: %s" % redact(e, self._dsn).strip())

    # organizations ---------------------------------------------------------------------------
    def org_status(self, org_id):
        """Status string, or None if the org does not exist."""
        rows = self._run("SELECT status FROM organizations WHERE org_id = %s", (org_id,))
        return rows[0][0] if rows else None

    def set_org_status(self, org_id, status):
        """The dashboard's suspend route, in SQL: only organizations.status changes."""
        return self._run("UPDATE organizations SET status = %s WHERE org_id = %s AND status IS DISTINCT FROM %s",
                         (status, org_id, status), fetch=False, commit=True)

    # agents ----------------------------------------------------------------------------------
    def org_agents(self, org_id):
        """[{agent_id, org_id, cert_pem, cert_thumbprint, is_active}] of one org."""
        rows = self._run("SELECT agent_id, org_id, cert_pem, cert_thumbprint, is_active FROM agents "
                         "WHERE org_id = %s ORDER BY agent_id", (org_id,))
        return [dict(agent_id=r[0], org_id=r[1], cert_pem=r[2], cert_thumbprint=r[3], is_active=r[4])
                for r in rows]

    def invalidate_tokens(self, org_id, agent_ids):
        """What POST /v1/auth/revoke-agent does: token_invalidated_at = now(). Returns agent ids hit."""
        rows = self._run("UPDATE agents SET token_invalidated_at = now() WHERE org_id = %s AND agent_id = ANY(%s) "
                         "RETURNING agent_id", (org_id, list(agent_ids)), commit=True)
        return sorted(r[0] for r in rows)

    # bindings --------------------------------------------------------------------------------
    def org_bindings(self, org_id):
        rows = self._run("SELECT id, org_id, agent_id, status FROM bindings WHERE org_id = %s ORDER BY id",
                         (org_id,))
        return [dict(id=r[0], org_id=r[1], agent_id=r[2], status=r[3]) for r in rows]

    def revoke_bindings(self, org_id, binding_ids):
        rows = self._run("UPDATE bindings SET status = 'revoked' WHERE org_id = %s AND id = ANY(%s) "
                         "AND status <> 'revoked' RETURNING id", (org_id, list(binding_ids)), commit=True)
        return sorted(r[0] for r in rows)
