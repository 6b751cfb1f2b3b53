# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the backend of the org_onboard module (one job: bring an org and its
agents to the described state on a broker, idempotently, waiting out the publish-agent limit).

Not a public API of the collection. The module keeps its documentation, argument spec and the
validation of its options; `Onboarder(module, client).run(agent_specs)` does the work.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.cullis.broker.plugins.module_utils._broker import path_quote
from ansible_collections.cullis.broker.plugins.module_utils import _org_identity as oid
from ansible_collections.cullis.broker.plugins.module_utils._agent_client import AgentIdentity, publish_agent
from ansible_collections.cullis.broker.plugins.module_utils._redact import protect


DEFAULT_RETRY_AFTER = 60


class OnboardError(Exception):
    pass


class Onboarder(object):
    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.check = module.check_mode
        p = module.params
        self.org_id = p['org_id']
        self.display_name = p['display_name'] or p['org_id']
        self.dir = oid.OrgIdentityDir(os.path.abspath(p['identity_dir']))
        self.actions = []
        self.org_created = False
        self.state = self.dir.load_state()
        if self.state.get('org_id') not in (None, self.org_id):
            raise OnboardError("identity_dir %s belongs to org %r, not %r; use another directory"
                               % (self.dir.path, self.state.get('org_id'), self.org_id))
        self.secret = p['org_secret'] or protect(module, self.dir.load_secret())
        self.secret_is_new = False
        self.max_wait = p.get('rate_limit_wait', 300)
        self.waited = 0
        self.sleep = time.sleep

    # --- HTTP helpers ---------------------------------------------------------------------
    def org_headers(self):
        return {'x-org-id': self.org_id, 'x-org-secret': self.secret}

    def call(self, what, method, path, body=None, admin=False, org=False, ok=(200,), query=None):
        resp = self.client.request(method, path, body=body, admin=admin, query=query,
                                   headers=self.org_headers() if org else None)
        if resp.status not in ok:
            raise OnboardError("%s failed: %s %s answered HTTP %s: %s"
                               % (what, method, path, resp.status, resp.detail))
        return resp

    def act(self, text):
        self.actions.append(text)

    # --- steps ----------------------------------------------------------------------------
    def ensure_org(self):
        resp = self.call('reading org %s' % self.org_id, 'GET', '/v1/registry/orgs/' + path_quote(self.org_id),
                         admin=True, ok=(200, 404))
        if resp.status == 404:
            if not self.secret:
                self.secret = protect(self.module, oid.new_org_secret())
                self.secret_is_new = True
            self.act('create org %s' % self.org_id)
            self.org_created = True
            if not self.check:
                self.save_secret()
                self.call('creating org %s' % self.org_id, 'POST', '/v1/registry/orgs', admin=True, ok=(201,),
                          body={'org_id': self.org_id, 'display_name': self.display_name,
                                'secret': self.secret, 'metadata': {}})
            return
        org = resp.json() or {}
        if not self.secret:
            raise OnboardError("org %s already exists on the broker and no org secret is known (none in %s, "
                               "org_secret not set): pass org_secret, or onboard a new org_id"
                               % (self.org_id, self.dir.file(oid.SECRET_FILE)))
        me = self.call('checking the credentials of org %s' % self.org_id, 'GET', '/v1/registry/orgs/me',
                       org=True, ok=(200, 401, 403))
        if me.status != 200:
            raise OnboardError("org %s already exists on the broker but rejects the org secret (HTTP %s: %s): "
                               "pass the right org_secret, or onboard a new org_id"
                               % (self.org_id, me.status, me.detail))
        if org.get('status') != 'active':
            raise OnboardError("org %s exists but is %r, not active: approve it first "
                               "(POST /v1/admin/orgs/%s/approve) or onboard a new org_id"
                               % (self.org_id, org.get('status'), self.org_id))
        if self.dir.load_secret() != self.secret and not self.check:
            self.save_secret()

    def save_secret(self):
        if self.dir.load_secret() != self.secret:
            self.dir.ensure_dirs()
            self.dir.save_secret(self.secret)

    def ensure_ca(self):
        ca = self.dir.load_ca()
        if ca is None:
            self.act('generate org CA')
            if self.check:
                return None
            ca = oid.make_org_ca(self.org_id)
            self.dir.ensure_dirs()
            self.dir.save_ca(*ca)
        ca_pem = oid.cert_pem(ca[1])
        digest = oid.sha256_hex(ca_pem)
        if self.org_created or self.state.get('ca_uploaded_sha256') != digest:
            self.act('upload org CA')
            if not self.check:
                self.call('uploading the CA of org %s' % self.org_id, 'POST',
                          '/v1/registry/orgs/%s/certificate' % path_quote(self.org_id), org=True,
                          body={'ca_certificate': ca_pem})
                self.state['ca_uploaded_sha256'] = digest
                self.save_state()
        return ca

    def ensure_mastio(self):
        key = self.dir.load_mastio_key()
        if key is None:
            self.act('generate mastio key')
            if self.check:
                return None
            key = oid.new_ec_key()
            self.dir.ensure_dirs()
            self.dir.save_mastio_key(key)
        pub = oid.public_pem(key)
        digest = oid.sha256_hex(pub)
        if self.org_created or self.state.get('mastio_pinned_sha256') != digest:
            self.act('pin mastio public key')
            if not self.check:
                self.call('pinning the mastio key of org %s' % self.org_id, 'PATCH',
                          '/v1/admin/orgs/%s/mastio-pubkey' % path_quote(self.org_id), admin=True,
                          body={'mastio_pubkey': pub})
                self.state['mastio_pinned_sha256'] = digest
                self.save_state()
        return key

    def bindings(self):
        if self.org_created:
            return {}
        resp = self.call('listing the bindings of org %s' % self.org_id, 'GET', '/v1/registry/bindings',
                         org=True, query={'org_id': self.org_id})
        found = {}
        for b in resp.json() or []:
            if isinstance(b, dict) and b.get('org_id') == self.org_id:
                found[b.get('agent_id')] = b
        return found

    def agent_identity(self, spec, ca, mastio_key):
        """Load or (outside check mode) create the agent's identity directory."""
        agent_id, name = spec['agent_id'], spec['short']
        adir = self.dir.agent_dir(name)
        if os.path.exists(os.path.join(adir, 'identity.json')):
            ident = AgentIdentity.load(adir)
            if ca is not None:
                cert = oid.load_cert(ident.cert_pem)
                if cert.issuer != ca[1].subject:
                    raise OnboardError("agent certificate %s/cert.pem was not issued by the org CA in %s; "
                                       "remove the agent directory to issue a new one" % (adir, self.dir.path))
            return ident, False
        if self.check or ca is None:
            return None, True
        key, cert = oid.issue_agent_cert(ca[0], ca[1], self.org_id, agent_id)
        ident = AgentIdentity(agent_id, self.org_id, oid.cert_pem(cert), oid.private_pem(key),
                              chain_pems=(), mastio_key_pem=oid.private_pem(mastio_key))
        ident.save(adir)
        return ident, True

    def publish(self, mastio_key, agent_id, ident, spec):
        """publish-agent, waiting out its rate limit (30/min/IP) for at most rate_limit_wait seconds."""
        while True:
            resp = publish_agent(self.client, mastio_key, agent_id, ident.cert_pem.decode('ascii'),
                                 capabilities=spec['capabilities'], display_name=spec['display_name'])
            if resp.status != 429 or self.waited >= self.max_wait:
                return resp
            try:
                pause = max(1, int(resp.headers.get('retry-after', DEFAULT_RETRY_AFTER)))
            except ValueError:
                pause = DEFAULT_RETRY_AFTER
            pause = min(pause, self.max_wait - self.waited)
            self.sleep(pause)
            self.waited += pause

    def ensure_agent(self, spec, ca, mastio_key, bindings):
        agent_id = spec['agent_id']
        ident, new_cert = self.agent_identity(spec, ca, mastio_key)
        if new_cert:
            self.act('issue certificate for %s' % agent_id)
        binding = bindings.get(agent_id)
        out = {'agent_id': agent_id, 'name': spec['short'], 'dir': self.dir.agent_dir(spec['short']),
               'cert_serial_hex': None, 'cert_thumbprint': None, 'binding_id': None, 'binding_status': None}
        if ident is not None:
            cert = oid.load_cert(ident.cert_pem)
            out['cert_serial_hex'] = oid.serial_hex(cert)
            out['cert_thumbprint'] = oid.cert_thumbprint(cert)
        published = self.state.setdefault('agents', {}).get(agent_id, {})
        if binding is None or new_cert or published.get('cert_thumbprint') != out['cert_thumbprint']:
            self.act('publish agent %s' % agent_id)
            if not self.check:
                resp = self.publish(mastio_key, agent_id, ident, spec)
                if resp.status != 200:
                    raise OnboardError("publishing agent %s failed: HTTP %s: %s" % (agent_id, resp.status, resp.detail))
                self.state['agents'][agent_id] = {'cert_thumbprint': out['cert_thumbprint'],
                                                  'cert_serial_hex': out['cert_serial_hex']}
                self.save_state()
        if binding is None:
            self.act('create binding for %s' % agent_id)
            if not self.check:
                resp = self.call('creating the binding of %s' % agent_id, 'POST', '/v1/registry/bindings',
                                 org=True, ok=(201,),
                                 body={'org_id': self.org_id, 'agent_id': agent_id, 'scope': spec['scope']})
                binding = resp.json()
        if binding is not None:
            out['binding_id'] = binding.get('id')
            out['binding_status'] = binding.get('status')
        if out['binding_status'] != 'approved':
            self.act('approve binding for %s' % agent_id)
            if not self.check:
                resp = self.call('approving the binding of %s' % agent_id, 'POST',
                                 '/v1/registry/bindings/%s/approve' % out['binding_id'], org=True)
                out['binding_status'] = (resp.json() or {}).get('status', 'approved')
        return out

    def save_state(self):
        self.state['org_id'] = self.org_id
        self.dir.ensure_dirs()
        self.dir.save_state(self.state)

    def run(self, agent_specs):
        self.ensure_org()
        ca = self.ensure_ca()
        mastio_key = self.ensure_mastio()
        if not self.check and not self.state.get('org_id'):
            self.save_state()
        bindings = self.bindings()
        agents = [self.ensure_agent(spec, ca, mastio_key, bindings) for spec in agent_specs]
        return agents
