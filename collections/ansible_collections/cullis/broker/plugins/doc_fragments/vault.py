# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Connection options of every module that talks to the Vault/OpenBao HTTP API.
    # Keep in sync with plugins/module_utils/_vault.py:vault_argument_spec().
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Address of the Vault (or OpenBao) node, for example V(https://127.0.0.1:8200), or a list
        of addresses, one per node of an HA/raft cluster.
      - Modules that act on nodes (M(cullis.broker.vault_unseal), M(cullis.broker.vault_info))
        handle every node in the list; M(cullis.broker.vault_token) uses the first node that answers.
      - If not set, the environment variable E(VAULT_ADDR), then E(BAO_ADDR), is read when the
        module runs. A comma-separated value gives several nodes.
    type: list
    elements: str
    required: true
    aliases: [addr]
  ca_cert:
    description:
      - PEM file of the CA that signed the Vault TLS certificate.
      - If not set, E(VAULT_CACERT), then E(BAO_CACERT), then the system trust store are used.
    type: path
    aliases: [cacert]
  validate_certs:
    description:
      - Verify the Vault TLS certificate and host name. Only set V(false) for a lab.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for each HTTP request.
    type: float
    default: 10
  retries:
    description:
      - How many times a request is retried after a connection error or an HTTP 5xx answer,
        with exponential backoff starting at O(retry_delay). V(0) disables retries.
      - Submitting an unseal key is only retried when the connection was refused, so a key is
        never submitted twice.
    type: int
    default: 3
  retry_delay:
    description:
      - Seconds before the first retry; doubled on each further retry.
    type: float
    default: 0.5
notes:
  - Standard library only (HTTP API over C(http.client) and C(ssl)); nothing is needed on the target.
  - Set these options once per play with C(module_defaults) and the action group
    C(group/cullis.broker.vault).
"""
