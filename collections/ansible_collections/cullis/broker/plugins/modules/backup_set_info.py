#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_set_info
short_description: Report the newest backup set (optionally the newest verified one) under a directory
description:
  - Looks at the backup sets (C(set-*) directories with a C(backup-set.json), written by
    M(cullis.broker.backup_set)) under O(path) and reports the newest one, with the start time of
    its Postgres backup (the end of the data-loss window of a restore) and whether that backup is
    verified.
  - Read-only; the restore and DR drill playbooks use it to pick the set to restore.
version_added: 0.1.0
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.info_module
options:
  path:
    description: The directory holding the sets (C(cullis_backup_dir)).
    type: path
    required: true
  verified_only:
    description: Only consider sets whose Postgres backup is verified (M(cullis.broker.pg_backup) V(verified)).
    type: bool
    default: false
seealso:
  - module: cullis.broker.backup_set
"""

EXAMPLES = r"""
- name: Newest verified backup set
  cullis.broker.backup_set_info:
    path: /var/backups/cullis
    verified_only: true
  register: newest

- name: Restore it
  ansible.builtin.debug:
    msg: "restore {{ newest.set }} (data up to {{ newest.backup_time }})"
  when: newest.set is not none
"""

RETURN = r"""
set:
  description: The newest set directory (the newest verified one with O(verified_only=true)); null when there is none.
  returned: always
  type: str
backup_time:
  description: Start time (UTC) of that set's Postgres backup; null without a set or a Postgres backup.
  returned: always
  type: str
verified:
  description: Whether that set's Postgres backup is verified.
  returned: always
  type: bool
count:
  description: How many sets were considered (all sets, or the verified ones with O(verified_only=true)).
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.cullis.broker.plugins.module_utils import _backup_set as bs
from ansible_collections.cullis.broker.plugins.module_utils import _pg_backup as pb


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            verified_only=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    chosen, count = bs.latest_set(module.params['path'], module.params['verified_only'])
    module.exit_json(changed=False, count=count, set=chosen['path'] if chosen else None,
                     backup_time=chosen['backup_time'] if chosen else None,
                     verified=pb.is_verified(chosen) if chosen else False)


if __name__ == '__main__':
    main()
