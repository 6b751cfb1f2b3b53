#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: stack_service
short_description: Start, stop, restart or reload one service of a Cullis stack
version_added: 0.1.0
description:
  - Controls one service (C(postgres), C(redis), C(vault), C(broker), C(nginx), ...) of a Cullis
    stack through the stack's runtime, the single interface every playbook of this collection
    uses to control services.
  - With O(runtime=process) the services run under one supervisord per stack, configured under
    O(stack_dir)/supervisor/ (written by the C(cullis.broker.supervisor) role). The module starts
    that supervisord when it is not running, and loads a new or changed program configuration
    of the service before acting (a changed running service is restarted, which counts as a change).
  - With O(runtime=compose) the service is a container of the compose project in
    O(compose_project_dir), found on the Docker engine O(docker_host) by the project's labels and
    O(compose_services). A service without a container, or whose config in the project changed
    (Compose's config hash), is created or re-created with C(docker compose up -d --no-deps) before
    acting; start, stop, restart and reload (SIGHUP) act on the container. The engine is never
    started by the module.
  - Stopping gives the service its grace period (the program's C(stopwaitsecs)), then SIGKILL, so
    a broker that ignores SIGTERM still stops.
  - O(name=all) with O(state=stopped) stops every service and the stack's supervisord itself.
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.runtime
attributes:
  check_mode:
    support: full
    description: Reports what would change (including loading a changed configuration) without acting.
  diff_mode:
    support: none
    description: Nothing to diff; RV(status) describes the service.
  idempotent:
    support: partial
    description: V(started) and V(stopped) are idempotent; V(restarted) and V(reloaded) always act.
options:
  name:
    description:
      - Service name, as in O(stack_dir)/supervisor/conf.d/<name>.conf.
      - V(all) is accepted only with O(state=stopped).
    type: str
    required: true
  state:
    description:
      - V(started) starts the service when it is not running and waits until it is running.
      - V(stopped) stops it (grace period, then SIGKILL).
      - V(restarted) stops and starts it.
      - V(reloaded) sends it SIGHUP (nginx, Vault and PostgreSQL re-read configuration and
        certificates) or starts it when it is down.
    type: str
    choices: [started, stopped, restarted, reloaded]
    default: started
notes:
  - Readiness of the application (for example the broker's C(/health)) is not checked here; follow
    with M(ansible.builtin.uri) or the health modules of this collection.
'''

EXAMPLES = r'''
- name: Restart the broker (SIGTERM, grace period, then SIGKILL; then start)
  cullis.broker.stack_service:
    name: broker
    state: restarted
    stack_dir: "{{ cullis_stack_dir }}"

- name: Make nginx re-read its certificates without dropping connections
  cullis.broker.stack_service:
    name: nginx
    state: reloaded
    stack_dir: "{{ cullis_stack_dir }}"

- name: Stop PostgreSQL
  cullis.broker.stack_service:
    name: postgres
    state: stopped
    stack_dir: "{{ cullis_stack_dir }}"
  register: pg

- name: Stop the whole stack, supervisord included
  cullis.broker.stack_service:
    name: all
    state: stopped
    stack_dir: "{{ cullis_stack_dir }}"
'''

RETURN = r'''
state:
  description: State of the service after the task (supervisord state names), V(ABSENT) when unknown.
  returned: always
  type: str
  sample: RUNNING
pid:
  description: PID of the running service, null when it is down.
  returned: always
  type: int
  sample: 12345
uptime:
  description: Seconds since the service started, 0 when down.
  returned: always
  type: int
  sample: 42
config_change:
  description: V(added) or V(changed) when a new program configuration was loaded, else null.
  returned: always
  type: str
  sample: changed
status:
  description: Full status of the service as reported by the runtime.
  returned: always
  type: dict
  contains:
    name: {description: Service name., type: str, returned: always}
    state: {description: State name., type: str, returned: always}
    running: {description: Whether it runs., type: bool, returned: always}
    pid: {description: PID or null., type: int, returned: always}
    uptime: {description: Seconds up., type: int, returned: always}
    start: {description: Epoch seconds of the last start (0 = never)., type: int, returned: always}
    stop: {description: Epoch seconds of the last stop (0 = never)., type: int, returned: always}
    exitstatus: {description: Exit status of the last run of the service., type: int, returned: always}
    spawnerr: {description: "supervisord's spawn error (empty when none).", type: str, returned: always}
    description: {description: supervisord's one-line description., type: str, returned: always}
    logfile: {description: Path of the service log., type: str, returned: always}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.cullis.broker.plugins.module_utils._runtime import (
    RuntimeErrorCullis, get_runtime, runtime_argument_spec, runtime_options, STARTING_STATES)


def plan(rt, name, state):
    """Return (changed, config_change) that `state` would cause, without acting."""
    if not rt.daemon_running():
        return state != 'stopped', ('added' if state != 'stopped' else None)
    config_change = rt.pending_config(name) if name != 'all' else None
    st = rt.status(name)
    if state == 'stopped':
        if name == 'all':
            return True, None
        return bool(st['running'] or st['state'] in STARTING_STATES + ('STOPPING',)), None
    if state == 'started':
        return bool(config_change) or not st['running'], config_change
    return True, config_change


def main():
    argument_spec = dict(
        name=dict(type='str', required=True),
        state=dict(type='str', default='started', choices=['started', 'stopped', 'restarted', 'reloaded']),
    )
    argument_spec.update(runtime_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    name, state = module.params['name'], module.params['state']
    if name == 'all' and state != 'stopped':
        module.fail_json(msg="name=all is only valid with state=stopped")

    try:
        rt = get_runtime(module.params['runtime'], module.params['stack_dir'], timeout=module.params['timeout'],
                         **runtime_options(module.params))
        if module.check_mode:
            changed, config_change = plan(rt, name, state)
            st = rt.status(name) if name != 'all' else dict(state='UNKNOWN', pid=None, uptime=0)
            module.exit_json(changed=changed, state=st['state'], pid=st['pid'], uptime=st['uptime'],
                             config_change=config_change, status=st)

        if name == 'all':
            changed = rt.shutdown()
            module.exit_json(changed=changed, state='STOPPED', pid=None, uptime=0, config_change=None,
                             status=dict(name='all', state='STOPPED', running=False))

        changed = False
        config_change = None
        if state == 'stopped':
            if rt.daemon_running():
                changed = rt.stop(name)
        else:
            changed = rt.ensure_daemon()
            config_change = rt.apply_config(name)
            changed = changed or bool(config_change)
            if state == 'started':
                changed = rt.start(name) or changed
            elif state == 'restarted':
                rt.restart(name)
                changed = True
            elif state == 'reloaded':
                rt.reload(name)
                changed = True
        st = rt.status(name)
    except RuntimeErrorCullis as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=changed, state=st['state'], pid=st['pid'], uptime=st['uptime'],
                     config_change=config_change, status=st)


if __name__ == '__main__':
    main()
