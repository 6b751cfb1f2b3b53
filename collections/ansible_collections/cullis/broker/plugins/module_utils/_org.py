# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: one organization on the broker — existence, status, agents, org credentials.

Not a public API of the collection. Shared by cert_revoke, binding_revoke, org_state and
agent_token_invalidate. Org credentials options: plugins/doc_fragments/org_credentials.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import env_fallback
from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerError, path_quote
from ansible_collections.cullis.broker.plugins.module_utils._serials import (
    SerialError, cert_info_from_pem, isoformat_utc, normalize_serial)


class OrgError(Exception):
    """An operator-facing failure about an org (missing, credentials rejected, no discovery path)."""


def org_credentials_argument_spec():
    """Options of plugins/doc_fragments/org_credentials.py."""
    return dict(
        org_id=dict(type='str', required=True),
        org_secret=dict(type='str', no_log=True, fallback=(env_fallback, ['CULLIS_ORG_SECRET'])),
    )


def org_headers(org_id, org_secret):
    return {'x-org-id': org_id, 'x-org-secret': org_secret}


def admin_failure(resp, what):
    """Message for an admin call that did not succeed."""
    if resp.status == 403:
        return ("%s: the broker rejected the admin secret (403 %s); use the ADMIN_SECRET of the broker's "
                "environment (.env), not the dashboard password" % (what, resp.detail))
    if resp.status == 422:
        return "%s: the broker wants the admin secret (422); set admin_secret or CULLIS_ADMIN_SECRET" % what
    return "%s: HTTP %s %s" % (what, resp.status, resp.detail)


def is_missing_route(resp):
    """True when a 404/405 means 'this broker has no such endpoint' (FastAPI's own answer)."""
    return resp.status == 405 or (resp.status == 404 and resp.detail in ('Not Found', ''))


def get_org(client, org_id):
    """GET /v1/registry/orgs/{id} (admin, any status) -> dict, or raise OrgError."""
    try:
        resp = client.admin_get('/v1/registry/orgs/%s' % path_quote(org_id))
    except BrokerError as e:
        raise OrgError(str(e))
    if resp.status == 404:
        raise OrgError("organization %r not found on %s (check org_id); nothing was changed"
                       % (org_id, client.base_url))
    if resp.status != 200:
        raise OrgError(admin_failure(resp, "reading organization %r" % org_id))
    return resp.json() or {}


def _agent_from_db_row(row):
    entry = dict(agent_id=row['agent_id'], org_id=row['org_id'], is_active=bool(row['is_active']),
                 cert_thumbprint=row.get('cert_thumbprint'), serial_hex=None, not_after=None)
    if row.get('cert_pem'):
        try:
            info = cert_info_from_pem(row['cert_pem'], where='agents.cert_pem of %s' % row['agent_id'])
            entry['serial_hex'] = info.serial_hex
            entry['not_after'] = isoformat_utc(info.not_after)
        except SerialError as e:
            entry['error'] = str(e)
    return entry


def discover_org_agents(client, org_id, db_factory=None):
    """Every agent of an org with its certificate serial.

    Uses the admin agent listing (a broker_src extension) when the broker has it, else the
    database's agents.cert_pem through `db_factory()` (a callable returning a BrokerDB, or None
    when no db_dsn was given). Returns (agents, source) with source 'api' or 'database'.
    """
    try:
        resp = client.admin_get('/v1/admin/agents', query={'org_id': org_id})
    except BrokerError as e:
        raise OrgError(str(e))
    if resp.status == 200 and isinstance(resp.json(), list):
        agents = []
        for item in resp.json():
            entry = dict(agent_id=item.get('agent_id'), org_id=item.get('org_id', org_id),
                         is_active=bool(item.get('is_active')), cert_thumbprint=item.get('cert_thumbprint'),
                         serial_hex=None, not_after=item.get('not_after'))
            if item.get('serial_hex'):
                try:
                    entry['serial_hex'] = normalize_serial(item['serial_hex'])
                except SerialError as e:
                    entry['error'] = str(e)
            agents.append(entry)
        return sorted(agents, key=lambda a: a['agent_id']), 'api'
    if not is_missing_route(resp):
        raise OrgError(admin_failure(resp, "listing the agents of %r" % org_id))
    db = db_factory() if db_factory else None
    if db is None:
        raise OrgError("this broker has no admin agent listing (GET /v1/admin/agents -> %s), as real Cullis "
                       "brokers don't; set db_dsn (the broker's DATABASE_URL) so the agents' certificates are "
                       "read from the database" % resp.status)
    return [_agent_from_db_row(r) for r in db.org_agents(org_id)], 'database'
