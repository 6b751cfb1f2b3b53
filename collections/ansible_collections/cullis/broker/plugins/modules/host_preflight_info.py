#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: host_preflight_info
short_description: Read what a preflight needs to know about a host before a deploy or upgrade (read-only)
version_added: 0.1.0
description:
  - Reports, for the host it runs on, who listens on the given TCP ports and whether that listener
    belongs to the Cullis stack (a descendant of the stack's supervisord, of one of the stack's compose
    containers with O(runtime=compose), or a command line under O(stack_dir)), the free space of the filesystems that hold (or will hold) the given paths,
    whether the given host names resolve, and the host's OS, Python version and clock.
  - The incident role reads the disk usage of PostgreSQL's data directory with it, on the database
    host (runbook section 2, disk full).
  - Decides nothing; C(playbooks/preflight.yml) compares the facts with the deployment's needs.
  - Linux only (reads C(/proc)). Standard library only, except with O(runtime=compose), which reads the
    project's containers from the Docker engine with the Docker SDK for Python (PyPI C(docker)).
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.info_module
options:
  ports:
    description: TCP ports to look up (any listening address, IPv4 and IPv6).
    type: list
    elements: int
    default: []
  stack_dir:
    description: The stack directory; a listener whose process descends from its supervisord, or whose command line names it, is the stack's own.
    type: path
  runtime:
    description:
      - How the stack runs its services (C(cullis_runtime)). With V(compose), a listener that descends from
        the init of one of the compose project's containers (found by the project's labels on the engine,
        as M(cullis.broker.stack_service) finds them) is the stack's own, so a redeploy does not take the
        stack's containers for foreign processes.
    type: str
    choices: [process, compose]
    default: process
  compose_project_dir:
    description: With O(runtime=compose), the compose project's directory (C(cullis_compose_project_dir)). Default C(<stack_dir>/compose).
    type: path
  compose_project:
    description: With O(runtime=compose), the compose project name (C(cullis_compose_project)), when the containers are found by name.
    type: str
  docker_host:
    description: With O(runtime=compose), the Docker engine address (C(cullis_docker_host)). Default E(DOCKER_HOST), else the engine's default socket.
    type: str
  paths:
    description: Paths whose filesystem's free space is reported; a path that does not exist yet is measured at its nearest existing parent.
    type: list
    elements: path
    default: []
  resolve:
    description: Host names to resolve on this host.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Ports, disk, names and clock of a broker host
  cullis.broker.host_preflight_info:
    ports: [8000]
    stack_dir: /opt/cullis/stack
    paths: [/opt/cullis/stack, /opt/cullis/stack/backups]
    resolve: [db1.example.org]
  register: facts

- name: Stop when a port is taken by something else
  ansible.builtin.assert:
    that: facts.ports | rejectattr('ours') | selectattr('listening') | list | length == 0
"""

RETURN = r"""
ports:
  description:
    - One entry per port of O(ports). C(ours) is true when every listener descends from the stack's
      supervisord or runs from the stack directory. C(owner_seen) is false when the listening
      process itself could not be seen (another user's process without C(CAP_SYS_PTRACE), as for
      root in a container); C(pids) are then the processes of the socket's user, and C(ours) is
      true when one of them is the stack's.
  type: list
  elements: dict
  returned: always
  sample: [{"port": 8000, "listening": true, "ours": false, "pids": [4242], "commands": ["python3 -m http.server 8000"],
            "owner_seen": true}]
disk:
  description:
    - One entry per path of O(paths), the same figures as M(cullis.broker.disk_usage_info) (C(path),
      C(checked) = the existing path measured, C(total_bytes), C(used_bytes), C(free_bytes), C(total_mb),
      C(free_mb), C(used_percent)).
    - C(used_percent) is what C(df) shows as C(Use%), used / (used + available to unprivileged users), rounded
      up to a whole percent as C(df) does, so a service that does not run as root sees its disk full at 100.
  type: list
  elements: dict
  returned: always
  sample: [{"path": "/srv/cullis/postgres/data", "checked": "/srv/cullis/postgres/data", "total_bytes": 21474836480,
            "used_bytes": 15569256448, "free_bytes": 5368709120, "total_mb": 20480, "free_mb": 5120,
            "used_percent": 75}]
names:
  description: One entry per name of O(resolve) (C(name), C(resolved), C(addresses), C(error)).
  type: list
  elements: dict
  returned: always
os:
  description: C(id), C(version_id) and C(pretty_name) from C(/etc/os-release).
  type: dict
  returned: always
  sample: {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"}
python_version:
  description: Version of the Python running the module (the host's interpreter).
  type: str
  returned: always
epoch:
  description: The host's clock (seconds since the epoch) when the module ran.
  type: float
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils import _host_preflight as backend
from ansible_collections.cullis.broker.plugins.module_utils._runtime import RuntimeErrorCullis, get_runtime, runtime_options


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ports=dict(type='list', elements='int', default=[]),
            stack_dir=dict(type='path'),
            runtime=dict(type='str', default='process', choices=['process', 'compose']),
            compose_project_dir=dict(type='path'),
            compose_project=dict(type='str'),
            docker_host=dict(type='str'),
            paths=dict(type='list', elements='path', default=[]),
            resolve=dict(type='list', elements='str', default=[]),
        ),
        required_if=[('runtime', 'compose', ('stack_dir',))],
        supports_check_mode=True,
    )
    p = module.params
    result = backend.host_facts()
    container_pids = []
    if p['runtime'] == 'compose' and p['ports']:
        try:
            rt = get_runtime('compose', p['stack_dir'], **runtime_options(p))
            container_pids = backend.compose_container_pids(rt)
        except RuntimeErrorCullis as exc:
            module.fail_json(msg='cannot list the compose project\'s containers: %s' % exc)
    result['ports'] = backend.port_listeners(p['ports'], p['stack_dir'], container_pids)
    result['disk'] = backend.free_space(p['paths'])
    result['names'] = backend.resolve(p['resolve'])
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
