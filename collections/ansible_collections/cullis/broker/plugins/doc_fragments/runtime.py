# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Options of every module that reaches the stack's services through its runtime.
    # Keep in sync with plugins/module_utils/_runtime.py:runtime_argument_spec().
    DOCUMENTATION = r"""
options:
  stack_dir:
    description: The stack's state directory on the managed host (C(cullis_stack_dir)).
    type: path
    required: true
  runtime:
    description:
      - How the stack runs its services (C(cullis_runtime)) - V(process) (one supervisord per stack) or
        V(compose) (the containers of a Docker Compose v2 project, driven through the Docker engine).
    type: str
    choices: [process, compose]
    default: process
  timeout:
    description: Seconds to wait for the runtime (and, for M(cullis.broker.stack_service), for a service) to answer.
    type: float
    default: 60
  compose_project_dir:
    description:
      - With O(runtime=compose), the directory of the compose project (C(cullis_compose_project_dir)), also
        the project's working directory by which its containers are found. Default C(<stack_dir>/compose).
      - Point it at an existing deployment (for example upstream's C(deploy/compose/)) to adopt it.
    type: path
  compose_project:
    description:
      - With O(runtime=compose), the compose project name (C(cullis_compose_project)). When set, the
        containers are found by this name instead of by the project directory.
    type: str
  compose_services:
    description:
      - With O(runtime=compose), map of this collection's service names (V(postgres), V(redis), V(vault),
        V(broker), V(nginx)) to the project's service names (C(cullis_compose_services)); unmapped names are
        used as they are.
    type: dict
    default: {}
  docker_host:
    description:
      - With O(runtime=compose), the Docker engine address (C(cullis_docker_host)), for example
        C(unix:///run/docker.sock). Default the managed host's E(DOCKER_HOST), else the engine's default socket.
    type: str
notes:
  - Set these options once per play with C(module_defaults) and the action group
    C(group/cullis.broker.runtime).
"""
