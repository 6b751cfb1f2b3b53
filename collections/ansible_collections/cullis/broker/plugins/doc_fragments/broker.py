# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Connection options of every module that talks to the broker's HTTP API.
    # Keep in sync with plugins/module_utils/_broker.py:broker_argument_spec().
    DOCUMENTATION = r"""
options:
  broker_url:
    description:
      - Base URL of the broker, for example V(https://broker.example.com) or V(https://127.0.0.1:8443).
      - If not set, the environment variable E(CULLIS_BROKER_URL) is used.
    type: str
    required: true
  admin_secret:
    description:
      - The broker's E(ADMIN_SECRET), sent as the C(x-admin-secret) header on admin calls.
      - If not set, the environment variable E(CULLIS_ADMIN_SECRET) is used.
      - Never logged or returned.
    type: str
  ca_path:
    description:
      - PEM file of the CA that signed the broker's TLS certificate.
      - If not set, E(CULLIS_CA_PATH), then the system trust store are used.
    type: path
    aliases: [ca_cert]
  validate_certs:
    description:
      - Verify the broker's TLS certificate and host name. Only set V(false) for a lab.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for each HTTP request.
    type: float
    default: 10
  retries:
    description:
      - How many times an idempotent write (binding and certificate revocation, token
        invalidation, org suspension/reactivation/approval) is sent again after a 5xx answer or a
        connection error, with bounded exponential backoff (0.5 s doubling, at most 5 s per wait,
        +-50 % jitter). V(0) disables it. Reads and other writes are never retried.
      - Real brokers answer 500 to concurrent writes for one org and roll them back (contract
        section 6, point 20), so a retry is safe and usually succeeds.
      - Every retry is listed in the module result as C(retries) where the module returns it.
    type: int
    default: 3
  retry_action:
    description:
      - V(warn) reports each retry as a warning; V(ignore) only lists it in the result.
    type: str
    choices: [warn, ignore]
    default: warn
notes:
  - Set these options once per play with C(module_defaults) and the action group
    C(group/cullis.broker.broker).
"""

    # For modules whose every call is an admin call (broker_argument_spec(admin_secret_required=True)).
    # List it BEFORE cullis.broker.broker: the first fragment that documents an option wins.
    ADMIN_REQUIRED = r"""
options:
  admin_secret:
    description:
      - The broker's E(ADMIN_SECRET), sent as the C(x-admin-secret) header on admin calls.
      - If not set, the environment variable E(CULLIS_ADMIN_SECRET) is used (an empty variable counts
        as not set).
      - Required by this module. Never logged or returned.
    type: str
    required: true
"""
