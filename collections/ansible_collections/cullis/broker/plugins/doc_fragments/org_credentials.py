# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The org whose resources a module acts on, and its credentials.
    # Keep in sync with plugins/module_utils/_org.py:org_credentials_argument_spec().
    DOCUMENTATION = r"""
options:
  org_id:
    description:
      - The organization's id.
    type: str
    required: true
  org_secret:
    description:
      - The organization's secret, sent with O(org_id) as C(x-org-id) / C(x-org-secret) on org calls.
      - The broker accepts org credentials only while the org is C(active); a suspended org's calls get 403.
      - If not set, the environment variable E(CULLIS_ORG_SECRET) is used.
      - Never logged or returned.
    type: str
"""
