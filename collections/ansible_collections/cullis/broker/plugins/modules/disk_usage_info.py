#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: disk_usage_info
short_description: Disk usage of filesystems and sizes of directories on a host (read-only)
version_added: 0.1.0
description:
  - Reports, for the host it runs on, the usage of the filesystems that hold the given paths (what
    C(df -P) prints) and the allocated size of the given directories (what C(du -sk) adds up), so
    playbooks read disk usage from a module instead of parsing C(df)/C(du) output.
  - C(used_percent) is C(df)'s C(Use%) by C(df)'s definition and rounding, used / (used + available to
    unprivileged users) rounded up to a whole percent. M(cullis.broker.host_preflight_info) and
    M(cullis.broker.stack_info) report the same figure.
  - The incident role's triage snapshot reads the stack's disk with it, on every host of the stack.
  - Standard library only (C(os.statvfs), C(os.lstat)).
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.info_module
options:
  paths:
    description:
      - Paths whose filesystem usage is reported; a path that does not exist yet is measured at its
        nearest existing parent.
    type: list
    elements: path
    default: []
  directories:
    description:
      - Files or directories whose allocated size is added up (symbolic links are not followed, a
        hard-linked file counts once). A path that does not exist is reported with C(exists=false).
    type: list
    elements: path
    default: []
"""

EXAMPLES = r"""
- name: Disk of the stack and size of its data directories
  cullis.broker.disk_usage_info:
    paths: [/opt/cullis/stack]
    directories: [/opt/cullis/stack/postgres, /opt/cullis/stack/backups]
  register: disk

- name: Stop before the database disk fills up
  ansible.builtin.assert:
    that: disk.filesystems[0].used_percent < 90
    fail_msg: "{{ disk.filesystems[0].checked }} is {{ disk.filesystems[0].used_percent }}% full"
"""

RETURN = r"""
filesystems:
  description:
    - One entry per path of O(paths) - C(path), C(checked) (the existing path measured), C(total_bytes),
      C(used_bytes), C(free_bytes) (available to unprivileged users), C(total_mb), C(free_mb),
      C(used_percent) (an integer, C(df)'s C(Use%); null for a filesystem with no blocks).
  type: list
  elements: dict
  returned: always
  sample: [{"path": "/opt/cullis/stack", "checked": "/opt/cullis/stack", "total_bytes": 21474836480,
            "used_bytes": 15569256448, "free_bytes": 5368709120, "total_mb": 20480, "free_mb": 5120,
            "used_percent": 75}]
directories:
  description:
    - One entry per path of O(directories) - C(path), C(exists), C(bytes) (allocated, as C(du) counts),
      C(unreadable) (entries that could not be read, whose size is missing from C(bytes)).
  type: list
  elements: dict
  returned: always
  sample: [{"path": "/opt/cullis/stack/postgres", "exists": true, "bytes": 52428800, "unreadable": 0}]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible_collections.cullis.broker.plugins.module_utils._disk import directory_size, filesystem_usage


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type='list', elements='path', default=[]),
            directories=dict(type='list', elements='path', default=[]),
        ),
        supports_check_mode=True,
    )
    try:
        filesystems = [filesystem_usage(p) for p in module.params['paths']]
    except OSError as e:
        module.fail_json(msg="cannot read the filesystem usage of %s: %s" % (e.filename, to_native(e)))
    directories = [directory_size(os.path.abspath(p)) for p in module.params['directories']]
    module.exit_json(changed=False, filesystems=filesystems, directories=directories)


if __name__ == '__main__':
    main()
