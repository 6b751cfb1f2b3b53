#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Why this file is ~470 lines: about 230 of them are DOCUMENTATION/EXAMPLES/RETURN; the code
# (~210 lines) is the login/expectation/message-exchange glue of this one module. The agent
# protocol (assertions, DPoP, nonces, message signing) is in module_utils/_agent_client.py and
# the identity files in module_utils/_org_identity.py.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: agent_login
short_description: Log one Cullis agent in (DPoP + mastio countersignature) and optionally exercise the session
version_added: "0.1.0"
description:
  - Logs one agent in against a broker with the full protocol of the contract (x5c client
    assertion, DPoP proof with the nonce round-trip, mastio countersignature), and checks the
    outcome against O(expect), O(expect_status) and O(expect_detail). Used by the smoke test and
    by every incident playbook's verify step.
  - Optionally makes the authenticated call C(GET /v1/federation/agents) (O(list_agents)) and
    sends one message to an agent of another org (O(send_message)) - the peer logs in, accepts the
    session and reads the message back, which proves delivery.
  - Changes no configuration, so it always reports C(changed=false). A login still has side
    effects on the broker (certificate pinned on first login, audit rows, rate-limit counters), in
    check mode too; see the C(check_mode) attribute.
  - The broker allows 10 token requests per minute per client IP and a plain login costs two
    (nonce round-trip); with O(prefetch_nonce) it costs one, and the peer of O(send_message) reuses
    the sender's nonce. On HTTP 429 the module waits for C(Retry-After) and retries, for at most
    O(rate_limit_wait) seconds.
  - The access token is never returned or logged; its claims are.
author: Cullis operations team (@cullis)
extends_documentation_fragment:
  - cullis.broker.broker
attributes:
  check_mode:
    support: partial
    description: Can run in check mode and return changed status prediction without modifying target.
    details:
      - The login (and O(list_agents)) runs in check mode too, since checking the outcome is the
        module's job; it has the side effects of any login (first-login certificate pinning, audit
        rows, rate-limit counters).
      - O(send_message) is not carried out in check mode (no session is opened, no message sent);
        RV(send_message.result) is then V(skipped_check_mode).
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description:
      - Never changes configuration; repeated runs give the same outcome while the broker state is
        unchanged (the first login of an agent pins its certificate, later logins find it pinned).
options:
  public_url:
    description:
      - The broker's external origin, its E(BROKER_PUBLIC_URL). DPoP proofs carry it as C(htu).
      - Defaults to O(broker_url). Set it when the module talks to the broker through another URL
        than the public one (for example straight to uvicorn behind nginx).
    type: str
  identity_dir:
    description:
      - Identity directory written by M(cullis.broker.org_onboard); used with O(agent).
      - Mutually exclusive with O(agent_dir) and O(cert_path).
    type: path
  agent:
    description:
      - Agent name (short or C(ORG::name)) inside O(identity_dir).
    type: str
  agent_dir:
    description:
      - An agent identity directory (C(identity.json), C(cert.pem), C(key.pem), C(chain.pem),
        C(mastio-key.pem)), for example RV(cullis.broker.org_onboard#module:agents[].dir).
    type: path
  agent_id:
    description:
      - Agent id C(ORG::name), with O(cert_path), O(key_path) and O(mastio_key_path).
    type: str
  cert_path:
    description: PEM certificate of the agent (leaf, optionally followed by intermediates).
    type: path
  key_path:
    description: PEM private key of the agent certificate.
    type: path
  mastio_key_path:
    description: PEM EC P-256 private key of the org's mastio, for the countersignature.
    type: path
  expect:
    description:
      - V(success) fails the task unless the login succeeds; V(failure) fails it unless the broker
        rejects the login; V(any) only reports.
    type: str
    choices: [success, failure, any]
    default: success
  expect_status:
    description:
      - HTTP status the login must end with (for example V(401) or V(403)). Implies nothing about O(expect).
    type: int
  expect_detail:
    description:
      - Text the broker's C(detail) must contain (for example V(Certificate has been revoked)).
    type: str
  list_agents:
    description:
      - After a successful login, call C(GET /v1/federation/agents) and return the result in RV(agents).
    type: bool
    default: false
  send_message:
    description:
      - After a successful login, send one message to a peer agent and have the peer read it.
      - The peer logs in too (two more token requests).
    type: dict
    suboptions:
      peer_identity_dir:
        description: Identity directory of the peer's org (with O(send_message.peer_agent)).
        type: path
      peer_agent:
        description: Peer agent name inside O(send_message.peer_identity_dir).
        type: str
      peer_agent_dir:
        description: The peer's agent identity directory (instead of the two options above).
        type: path
      payload:
        description: JSON payload of the message.
        type: dict
        default: {text: ping}
      require_delivery:
        description:
          - If V(false), a policy denial of the session (HTTP 403 with C(Policy) in the detail) is
            reported in RV(send_message) with RV(send_message.result=policy_denied) instead of failing.
        type: bool
        default: true
  prefetch_nonce:
    description:
      - Take the current DPoP nonce from an unauthenticated C(GET /v1/federation/agents) (every
        C(/v1) response carries it) before logging in, so a login costs one of the 10 token
        requests per minute instead of two. Falls back to the nonce round-trip when absent.
    type: bool
    default: true
  rate_limit_wait:
    description:
      - Longest total time, in seconds, to wait for the login rate limit (HTTP 429) to clear. V(0) fails at once.
    type: int
    default: 120
requirements:
  - cryptography
seealso:
  - module: cullis.broker.org_onboard
"""

EXAMPLES = r"""
- name: An onboarded agent can log in and list its org's agents
  cullis.broker.agent_login:
    broker_url: "{{ cullis_broker_public_url }}"
    ca_path: "{{ cullis_tls_ca_path }}"
    identity_dir: "{{ cullis_stack_dir }}/identities/demo-acme"
    agent: buyer
    list_agents: true
  register: login

- name: A revoked certificate can no longer log in
  cullis.broker.agent_login:
    broker_url: "{{ cullis_broker_public_url }}"
    ca_path: "{{ cullis_tls_ca_path }}"
    agent_dir: "{{ acme.agents[1].dir }}"
    expect: failure
    expect_status: 401
    expect_detail: Certificate has been revoked

- name: Buyer sends a message that seller reads (skipped if the broker's policy denies it)
  cullis.broker.agent_login:
    broker_url: "{{ cullis_broker_public_url }}"
    ca_path: "{{ cullis_tls_ca_path }}"
    identity_dir: /srv/cullis/identities/demo-acme
    agent: buyer
    send_message:
      peer_identity_dir: /srv/cullis/identities/demo-globex
      peer_agent: seller
      payload: {text: hello}
      require_delivery: false
  register: msg
"""

RETURN = r"""
agent_id:
  description: The agent that logged in.
  returned: always
  type: str
logged_in:
  description: Whether the broker issued a token.
  returned: always
  type: bool
status:
  description: HTTP status of the final login response (200 on success).
  returned: always
  type: int
detail:
  description: The broker's C(detail) on a rejected login, empty on success.
  returned: always
  type: str
claims:
  description: Claims of the issued access token (not verified here; the token itself is never returned).
  returned: on success
  type: dict
  sample: {"agent_id": "demo-acme::buyer", "org": "demo-acme", "scope": [], "exp": 1790000000}
rate_limit_waited:
  description: Seconds spent waiting for the login rate limit.
  returned: always
  type: float
agents:
  description: Body of C(GET /v1/federation/agents).
  returned: when O(list_agents=true) and the login succeeded
  type: dict
  sample: {"agents": [{"agent_id": "demo-acme::buyer", "org_id": "demo-acme"}], "total": 1}
send_message:
  description: Outcome of O(send_message).
  returned: when O(send_message) is set and the login succeeded
  type: dict
  contains:
    result:
      description:
        - V(delivered) (the peer read the exact payload), V(policy_denied), or V(skipped_check_mode)
          (in check mode; no session was opened, no message sent).
      type: str
    session_id:
      description: Broker session id.
      type: str
    msg_id:
      description: Message id returned by the broker.
      type: str
    send_status:
      description: Status the broker gave the message (C(queued) or C(accepted)).
      type: str
    received:
      description: The message as the peer read it.
      type: dict
    detail:
      description: The broker's detail when the policy denied the session.
      type: str
"""

import os
import time
import uuid

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cullis.broker.plugins.module_utils._broker import BrokerClient, BrokerError, broker_argument_spec
from ansible_collections.cullis.broker.plugins.module_utils._redact import protect
from ansible_collections.cullis.broker.plugins.module_utils._agent_client import (
    HAS_CRYPTOGRAPHY, CRYPTOGRAPHY_IMPORT_ERROR, AgentIdentity, AgentSession, LoginError, jws_unverified, sign_message)
from ansible_collections.cullis.broker.plugins.module_utils import _org_identity as oid

DEFAULT_RETRY_AFTER = 60


class LoginFailed(Exception):
    pass


def resolve_agent_dir(identity_dir, agent, what='agent'):
    if not agent:
        raise LoginFailed("%s: identity_dir needs the agent name" % what)
    state = oid.OrgIdentityDir(identity_dir).load_state()
    short = agent.partition('::')[2] if '::' in agent else agent
    if state.get('org_id') and '::' in agent and agent.partition('::')[0] != state['org_id']:
        raise LoginFailed("%s %s is not in %s (org %s)" % (what, agent, identity_dir, state['org_id']))
    path = oid.OrgIdentityDir(identity_dir).agent_dir(short)
    if not os.path.isdir(path):
        raise LoginFailed("%s %s has no identity in %s: onboard it with cullis.broker.org_onboard first"
                          % (what, agent, identity_dir))
    return path


def load_identity(p):
    try:
        if p['cert_path']:
            with open(p['cert_path'], 'rb') as f:
                pem = f.read()
            marker = b'-----BEGIN CERTIFICATE-----'
            certs = [marker + part for part in pem.split(marker)[1:]]
            if not certs:
                raise LoginFailed("cert_path %s holds no PEM certificate" % p['cert_path'])
            with open(p['key_path'], 'rb') as f:
                key_pem = f.read()
            with open(p['mastio_key_path'], 'rb') as f:
                mastio_pem = f.read()
            org_id = p['agent_id'].partition('::')[0]
            return AgentIdentity(p['agent_id'], org_id, certs[0], key_pem, certs[1:], mastio_pem)
        path = p['agent_dir'] or resolve_agent_dir(p['identity_dir'], p['agent'])
        return AgentIdentity.load(path)
    except (IOError, OSError, ValueError, KeyError, AttributeError) as e:
        raise LoginFailed("cannot read the agent identity: %s" % e)


def load_peer(m):
    if m.get('peer_agent_dir'):
        path = m['peer_agent_dir']
    elif m.get('peer_identity_dir'):
        path = resolve_agent_dir(m['peer_identity_dir'], m.get('peer_agent'), what='peer agent')
    else:
        raise LoginFailed("send_message needs peer_agent_dir, or peer_identity_dir and peer_agent")
    try:
        return AgentIdentity.load(path)
    except (IOError, OSError, ValueError, KeyError) as e:
        raise LoginFailed("cannot read the peer identity in %s: %s" % (path, e))


def retry_after_seconds(error):
    value = (getattr(error, 'headers', None) or {}).get('retry-after')
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER


def prefetch_nonce(session):
    """Seed the session with the broker's current DPoP nonce without spending a token request."""
    resp = session.client.request('GET', '/v1/federation/agents')
    nonce = resp.headers.get('dpop-nonce')
    if nonce:
        session.nonce = nonce
    return bool(nonce)


def login(session, max_wait, sleep=time.sleep):
    """Log in, waiting out 429s for at most `max_wait` s. Returns (status, detail, waited)."""
    waited = 0.0
    while True:
        try:
            session.login()
            return 200, '', waited
        except LoginError as e:
            if e.status != 429 or waited >= max_wait:
                return e.status, e.detail if isinstance(e.detail, str) else str(e.detail), waited
            pause = min(retry_after_seconds(e), max(1, max_wait - waited))
            sleep(pause)
            waited += pause


def check_expectations(p, status, detail):
    """List of unmet expectations (empty when the outcome is what the caller expected)."""
    problems = []
    if p['expect'] == 'success' and status != 200:
        problems.append("expected a successful login, got HTTP %s: %s" % (status, detail))
    if p['expect'] == 'failure' and status == 200:
        problems.append("expected the broker to reject the login, but it issued a token")
    if p['expect_status'] is not None and status != p['expect_status']:
        problems.append("expected HTTP %s, got HTTP %s (%s)" % (p['expect_status'], status, detail or 'no detail'))
    if p['expect_detail'] and p['expect_detail'] not in (detail or ''):
        problems.append("expected the detail to contain %r, got %r" % (p['expect_detail'], detail))
    return problems


def token_claims(token):
    try:
        return jws_unverified(token)[1]
    except (ValueError, TypeError):
        return {}


def must(resp, what, ok=(200,)):
    if resp.status not in ok:
        raise LoginFailed("%s failed: HTTP %s: %s" % (what, resp.status, resp.detail))
    return resp.json()


def exchange_message(client, p, sender, peer_identity, max_wait):
    m = p['send_message']
    peer = AgentSession(client, p['public_url'] or p['broker_url'], peer_identity)
    peer.nonce = sender.nonce  # the nonce is broker-wide: saves the peer one token request
    status, detail, _w = login(peer, max_wait)
    if status != 200:
        raise LoginFailed("peer %s cannot log in: HTTP %s: %s" % (peer_identity.agent_id, status, detail))
    me = sender.identity.agent_id
    resp = sender.request('POST', '/v1/broker/sessions', body={
        'target_agent_id': peer_identity.agent_id, 'target_org_id': peer_identity.org_id,
        'requested_capabilities': []})
    if resp.status == 403 and 'polic' in (resp.detail or '').lower():
        if m['require_delivery']:
            raise LoginFailed("the broker's policy denies a session %s -> %s: %s"
                              % (me, peer_identity.agent_id, resp.detail))
        return {'result': 'policy_denied', 'detail': resp.detail}
    session_id = must(resp, 'opening a session %s -> %s' % (me, peer_identity.agent_id), ok=(200, 201))['session_id']
    must(peer.request('POST', '/v1/broker/sessions/%s/accept' % session_id), 'accepting the session as the peer')
    nonce, ts, payload = str(uuid.uuid4()), int(time.time()), m['payload']
    sig = sign_message(sender.identity.key_pem, session_id, me, nonce, ts, payload)
    sent = must(sender.request('POST', '/v1/broker/sessions/%s/messages' % session_id, body={
        'session_id': session_id, 'sender_agent_id': me, 'payload': payload, 'nonce': nonce,
        'timestamp': ts, 'signature': sig}), 'sending the message', ok=(200, 202))
    got = must(peer.request('GET', '/v1/broker/sessions/%s/messages' % session_id, query={'after': -1}),
               'reading the message as the peer')
    received = [x for x in (got or []) if isinstance(x, dict) and x.get('nonce') == nonce]
    sender.request('POST', '/v1/broker/sessions/%s/close' % session_id)
    if not received:
        raise LoginFailed("message %s was accepted (%s) but the peer did not receive it"
                          % (sent.get('msg_id'), sent.get('status')))
    msg = received[0]
    if msg.get('payload') != payload or msg.get('sender_agent_id') != me:
        raise LoginFailed("the peer received a different message than was sent: %r" % (msg,))
    return {'result': 'delivered', 'session_id': session_id, 'msg_id': sent.get('msg_id'),
            'send_status': sent.get('status'), 'received': msg}


def main():
    argument_spec = broker_argument_spec()
    argument_spec.update(
        public_url=dict(type='str'),
        identity_dir=dict(type='path'),
        agent=dict(type='str'),
        agent_dir=dict(type='path'),
        agent_id=dict(type='str'),
        cert_path=dict(type='path'),
        key_path=dict(type='path'),
        mastio_key_path=dict(type='path'),
        expect=dict(type='str', choices=['success', 'failure', 'any'], default='success'),
        expect_status=dict(type='int'),
        expect_detail=dict(type='str'),
        list_agents=dict(type='bool', default=False),
        send_message=dict(type='dict', options=dict(
            peer_identity_dir=dict(type='path'),
            peer_agent=dict(type='str'),
            peer_agent_dir=dict(type='path'),
            payload=dict(type='dict', default={'text': 'ping'}),
            require_delivery=dict(type='bool', default=True),
        )),
        prefetch_nonce=dict(type='bool', default=True),
        rate_limit_wait=dict(type='int', default=120),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_one_of=[('identity_dir', 'agent_dir', 'cert_path')],
        mutually_exclusive=[('identity_dir', 'agent_dir', 'cert_path')],
        required_together=[('identity_dir', 'agent'), ('cert_path', 'key_path', 'mastio_key_path', 'agent_id')],
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=str(CRYPTOGRAPHY_IMPORT_ERROR))
    p = module.params
    result = dict(changed=False, logged_in=False, status=0, detail='', rate_limit_waited=0.0)
    client = BrokerClient.from_module(module)
    try:
        identity = load_identity(p)
        peer_identity = load_peer(p['send_message']) if p['send_message'] else None
        for ident in (identity, peer_identity):
            if ident is not None:  # private keys read from files: masked like no_log options
                protect(module, ident.key_pem, ident.mastio_key_pem)
        result['agent_id'] = identity.agent_id
        session = AgentSession(client, p['public_url'] or p['broker_url'], identity)
        if p['prefetch_nonce']:
            prefetch_nonce(session)
        status, detail, waited = login(session, p['rate_limit_wait'])
        result.update(status=status, detail=detail, rate_limit_waited=waited, logged_in=status == 200)
        if status == 200:
            result['claims'] = token_claims(session.access_token)
        problems = check_expectations(p, status, detail)
        if problems:
            module.fail_json(msg="login of %s: %s" % (identity.agent_id, '; '.join(problems)), **result)
        if status == 200 and p['list_agents']:
            result['agents'] = must(session.request('GET', '/v1/federation/agents'),
                                    'GET /v1/federation/agents as %s' % identity.agent_id)
        if status == 200 and peer_identity is not None:
            if module.check_mode:  # opening a session and sending a message are not read-only
                result['send_message'] = {'result': 'skipped_check_mode'}
            else:
                result['send_message'] = exchange_message(client, p, session, peer_identity,
                                                          p['rate_limit_wait'])
    except (LoginFailed, BrokerError) as e:
        module.fail_json(msg=str(e), **result)
    finally:
        client.close()
    module.exit_json(**result)


if __name__ == '__main__':
    main()
