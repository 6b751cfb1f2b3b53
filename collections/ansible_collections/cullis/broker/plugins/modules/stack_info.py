#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: stack_info
short_description: Facts of a Cullis stack on the host that runs it (layout, runtime, services, settings)
version_added: 0.1.0
description:
  - Runs on a stack host (any host of C(cullis_stack)) and reports what playbooks used to read
    with controller-side lookups - the layout of the stack directory, the runtime and the state of
    the services it runs on this host, disk usage of the stack's filesystem, and the non-secret
    settings of the host's C(.env).
  - The secrets of the host's C(.env) are returned only with O(secrets=true), in RV(secrets); the
    task that asks for them must set C(no_log) to V(true). RV(secret_keys) always names them (names only).
  - On a split deployment each host's C(.env) holds only what its service needs (the first broker
    host holds all of them) - ask the host that owns the secret.
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.info_module
  - cullis.broker.runtime
options:
  env_file:
    description: The host's C(.env). Default C(<stack_dir>/.env).
    type: path
  services:
    description: Services to report. Default - every service the runtime runs on this host.
    type: list
    elements: str
  secrets:
    description: Also return the secret values of the C(.env) in RV(secrets) (use C(no_log) on the task).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Layout, services and settings of the stack on the broker hosts
  cullis.broker.stack_info:
    stack_dir: "{{ cullis_stack_dir }}"
  register: stack

- name: ADMIN_SECRET for the API calls of this play (first broker host, never printed)
  cullis.broker.stack_info:
    stack_dir: "{{ cullis_stack_dir }}"
    secrets: true
  delegate_to: "{{ groups['cullis_broker'][0] }}"
  run_once: true
  register: broker_stack
  no_log: true

- name: Use it
  ansible.builtin.set_fact:
    admin_secret: "{{ broker_stack.secrets.ADMIN_SECRET | default('') }}"
  no_log: true
"""

RETURN = r"""
layout:
  description: Paths of the stack on this host (C(stack_dir), C(env_file), and C({path, exists}) for logs, tls_dir,
    ca_cert, supervisor_conf, postgres_dir, redis_dir, vault_dir, broker_dir, nginx_dir, backups, reports).
  type: dict
  returned: always
runtime:
  description: The runtime (C(kind)), whether its daemon answers (C(daemon_running)) and the error when it does not.
  type: dict
  returned: always
services:
  description: Per service run on this host - C(state), C(running), C(pid), C(uptime), C(exitstatus), C(logfile).
  type: dict
  returned: always
settings:
  description: The non-secret C(KEY=value) settings of the host's C(.env) (for example C(VAULT_ADDR), C(BROKER_PUBLIC_URL)).
  type: dict
  returned: always
secret_keys:
  description: Names (never values) of the secret keys in the host's C(.env).
  type: list
  elements: str
  returned: always
secrets:
  description: The secret C(KEY=value) pairs of the host's C(.env). Set C(no_log) on the task.
  type: dict
  returned: when O(secrets=true)
disk:
  description:
    - Usage of the filesystem of the stack directory, the same figures as M(cullis.broker.disk_usage_info)
      (C(path), C(checked) = the existing path measured, C(total_bytes), C(used_bytes), C(free_bytes),
      C(total_mb), C(free_mb), C(used_percent)); null when it cannot be read.
    - C(used_percent) is C(df)'s C(Use%), rounded up to a whole percent as C(df) does.
  type: dict
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._runtime import runtime_argument_spec, runtime_options
from ansible_collections.cullis.broker.plugins.module_utils._stack_info import gather


def main():
    argument_spec = runtime_argument_spec()
    argument_spec.update(
        env_file=dict(type='path'),
        services=dict(type='list', elements='str'),
        secrets=dict(type='bool', default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    result = gather(p['stack_dir'], env_file=p['env_file'], runtime=p['runtime'], services=p['services'],
                    timeout=p['timeout'], with_secrets=p['secrets'], runtime_options=runtime_options(p))
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
