# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: run_args
short_description: The inventory sources and extra variables of the running ansible-playbook
version_added: 0.1.0
description:
  - Returns what the current run was started with, so that a playbook which must start another
    C(ansible-playbook) (the DR drill's deploy, smoke and teardown of a staging stack) hands it
    B(exactly) the same inventory and command-line variables.
  - C(extra_vars) is the merged result of every C(-e)/C(--extra-vars) argument (C(key=value),
    JSON/YAML, C(@file)), loaded the way ansible-playbook itself loads them.
  - C(cwd) is the working directory of the run (where relative paths of the run resolve). The
    inventory sources are the magic variable C(ansible_inventory_sources).
  - The result may contain secrets given on the command line; use it with C(no_log) and hand it
    to the other run through a private file, never on a command line.
author: Cullis operations team (@cullis)
options: {}
"""

EXAMPLES = r"""
- name: The same variables for an inner run, in a private file
  ansible.builtin.copy:
    content: "{{ lookup('cullis.broker.run_args').extra_vars | to_json }}"
    dest: "{{ private_tmp }}/extra-vars.json"
    mode: "0600"
  no_log: true
"""

RETURN = r"""
_raw:
  description: One dictionary.
  type: list
  elements: dict
  contains:
    extra_vars:
      description: The merged command-line extra variables.
      type: dict
    cwd:
      description: The working directory of the run.
      type: str
"""

import os

from ansible import context
from ansible.plugins.lookup import LookupBase
from ansible.utils.vars import load_extra_vars


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        extra = load_extra_vars(self._loader) if context.CLIARGS.get('extra_vars') else {}
        return [dict(extra_vars=dict(extra), cwd=os.getcwd())]
