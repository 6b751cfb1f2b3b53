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
notes:
  - Set these options once per play with C(module_defaults) and the action group
    C(group/cullis.broker.broker).
"""
