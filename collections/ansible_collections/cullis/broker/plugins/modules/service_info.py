#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: service_info
short_description: State, exit class, restarts and redacted logs of the stack's services (read-only)
version_added: 0.1.0
description:
  - For each service of a Cullis stack, through the stack's runtime interface (C(cullis_runtime),
    today supervisord processes), reports state, pid, uptime, exit code and the signal that ended
    it, the restart count, and the last log lines with secrets redacted.
  - Classifies why a service is down (runbook section 1) into RV(services.exit_class) -
    V(startup_failure) (exit 3, with the first real error after the startup marker and its cause),
    V(oom) (a C(MemoryError) traceback from the memory limit, or a kernel/cgroup OOM kill of the
    pid), V(killed) (SIGKILL, exit 137, no OOM evidence), V(crash) (exit 1/2, with the traceback),
    V(signaled), V(stopped), V(never_started), V(running).
  - Secrets are redacted from every returned log line - the values of secret keys in the stack's
    C(.env) and secret-shaped patterns (passwords in URLs, C(x-admin-secret), tokens, JWTs).
author: Cullis operations team (!UNKNOWN)
extends_documentation_fragment:
  - cullis.broker.info_module
  - cullis.broker.runtime
options:
  services:
    description: Services to report. Default - every service the runtime knows.
    type: list
    elements: str
  log_lines:
    description: How many log lines to return per service (after redaction). V(0) returns none.
    type: int
    default: 40
  env_file:
    description: The stack's C(.env), whose secret values are redacted. Default C(<stack_dir>/.env).
    type: path
"""

EXAMPLES = r"""
- name: What happened to the broker?
  cullis.broker.service_info:
    stack_dir: "{{ cullis_stack_dir }}"
    services: [broker]
    log_lines: 200
  register: svc

- name: Show the exit class and the evidence
  ansible.builtin.debug:
    msg:
      - "{{ svc.services.broker.exit_class }} (exit {{ svc.services.broker.exit_code }}, {{ svc.services.broker.signal }})"
      - "{{ svc.services.broker.startup_error | default('') }}"

- name: Snapshot of every service
  cullis.broker.service_info:
    stack_dir: "{{ cullis_stack_dir }}"
  register: all_services
"""

RETURN = r"""
daemon_running:
  description: The runtime's control daemon (the stack's supervisord) answers.
  type: bool
  returned: always
down:
  description: Names of the reported services that are not running.
  type: list
  elements: str
  returned: always
services:
  description: One entry per service.
  type: dict
  returned: always
  contains:
    state:
      description: "Runtime state (RUNNING STOPPED EXITED FATAL BACKOFF STARTING STOPPING ABSENT)."
      type: str
      returned: always
    running:
      description: "The service runs."
      type: bool
      returned: always
    pid:
      description: "Pid while running."
      type: int
      returned: always
    uptime:
      description: "Seconds since start while running."
      type: int
      returned: always
    exit_code:
      description: "Exit status of the last exit; null when a signal ended it or it never exited."
      type: int
      returned: always
    signal:
      description: "Signal that ended the last run (e.g. SIGKILL)."
      type: str
      returned: always
    shell_exit_code:
      description: "Docker-style code - 128+signal (137 for SIGKILL) or the exit status."
      type: int
      returned: always
    exit_class:
      description: "Why it is down (see description)."
      type: str
      returned: always
    oom:
      description: "Out of memory was detected, and how (C(memory_error), C(kernel_oom_kill), C(cgroup),
        C(container) - a stopped container's C(State.OOMKilled) with O(runtime=compose);
        C(container_restarted) - a container that its restart policy runs again after an OOM kill within
        the last 10 minutes: the engine's C(State.OOMKilled) with the last exit's time, or its C(oom)
        events where the engine clears the flag on the restart), or null.
        A running service keeps V(running) as its exit class; the incident playbooks treat a
        running broker that is not ready with this set as an OOM."
      type: str
      returned: always
    cgroup_oom_kills:
      description: "oom_kill counter of the service's memory cgroup (cumulative), null without one."
      type: int
      returned: always
    restarts:
      description: "Spawns since the stack's supervisord started, minus one; with O(runtime=compose) the
        container's C(RestartCount)."
      type: int
      returned: always
    health:
      description: "The container's healthcheck status (V(starting), V(healthy), V(unhealthy), V(none)) with
        O(runtime=compose); null with O(runtime=process)."
      type: str
      returned: always
    addresses:
      description: "With O(runtime=compose), the container's IP addresses on its networks, which the engine's
        host reaches (how the operations playbooks reach a service that publishes no port, e.g. the
        postgres container of an adopted project); empty on the host's network and with O(runtime=process)."
      type: list
      elements: str
      returned: always
    spawnerr:
      description: "The runtime's spawn error."
      type: str
      returned: always
    logfile:
      description: "Path of the service log (with O(runtime=compose), the C(docker logs) command that shows it)."
      type: str
      returned: always
    log_tail:
      description: "Last O(log_lines) log lines, redacted."
      type: list
      elements: str
      returned: always
    startup_error:
      description: "For C(startup_failure) - the first real error after the startup marker (redacted)."
      type: str
      returned: when the service is down
    startup_error_cause:
      description: "C(migrations), C(vault), C(postgres), C(redis), C(config), C(memory) or C(unknown)."
      type: str
      returned: when the service is down
    evidence:
      description: "Error lines of the last run (redacted)."
      type: list
      elements: str
      returned: when the service is down
    traceback:
      description: "Last Python traceback of the last run (redacted)."
      type: list
      elements: str
      returned: when the service is down
  sample:
    broker:
      state: EXITED
      running: false
      pid: null
      exit_code: null
      signal: SIGKILL
      shell_exit_code: 137
      exit_class: killed
      restarts: 2
"""

import os
import re
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cullis.broker.plugins.module_utils._broker import read_env_file
from ansible_collections.cullis.broker.plugins.module_utils._diagnose import (
    classify_cause, classify_exit, last_exit, last_run, last_traceback, restart_count, shell_exit_code,
    startup_error, supervisor_events)
from ansible_collections.cullis.broker.plugins.module_utils._redact import Redactor, protect, secret_values_from_env
from ansible_collections.cullis.broker.plugins.module_utils._runtime import (
    RuntimeErrorCullis, get_runtime, runtime_argument_spec, runtime_options, tail_file)

SUPERVISOR_LOG_CANDIDATES = ('supervisor/supervisord.log', 'logs/supervisord.log')
ANALYSIS_LINES = 400
# how far back the engine's oom events of a restarted container count (compose runtime)
OOM_LOOKBACK = 600


def supervisor_log_lines(stack_dir):
    """supervisord's own log since it last started (spawn/exit events live there)."""
    for rel in SUPERVISOR_LOG_CANDIDATES:
        path = os.path.join(stack_dir, rel)
        if os.path.exists(path):
            lines = tail_file(path, 5000).splitlines()
            start = 0
            for i, line in enumerate(lines):
                if 'supervisord started with pid' in line:
                    start = i
            return lines[start:]
    return []


def kernel_oom_killed(pid, kernel_log):
    """True when the kernel log says it OOM-killed this pid (kernel or memory-cgroup OOM)."""
    if not pid or not kernel_log:
        return False
    rx = re.compile(r'(Killed process|oom-kill:.*pid=) ?%d\b' % pid)
    return any(rx.search(line) for line in kernel_log)


def cgroup_oom_kills(stack_dir, name):
    """oom_kill counter of the service's memory cgroup (the launcher writes run/<name>.cgroup), or None."""
    try:
        with open(os.path.join(stack_dir, 'run', '%s.cgroup' % name)) as f:
            directory = f.read().strip()
    except (IOError, OSError):
        return None
    for fname in ('memory.events', 'memory.oom_control'):
        try:
            with open(os.path.join(directory, fname)) as f:
                for line in f:
                    key, dummy, value = line.strip().partition(' ')
                    if key == 'oom_kill':
                        return int(value)
        except (IOError, OSError, ValueError):
            continue
    return None


def dmesg_lines():
    try:
        out = subprocess.run(['dmesg'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.decode('utf-8', 'replace').splitlines()


def describe(name, status, svc_lines, sup_lines, redact, log_lines, stack_dir='', kernel_log=None):
    events = supervisor_events(sup_lines, name)
    exit_ev = last_exit(events) if not status['running'] else None
    exit_code = status.get('exitstatus')
    signal_name = None
    if exit_ev is not None:
        signal_name = exit_ev.get('signal')
        exit_code = exit_ev.get('exit_code')
    elif status['running'] or status['state'] == 'ABSENT':
        exit_code = None
    if exit_code == -1:
        exit_code = None
    engine = 'oom_killed' in status  # a container runtime: the engine recorded the last exit itself
    if engine:
        exit_code, signal_name = status.get('exit_code'), status.get('signal')
    run = last_run(svc_lines)
    oom = None
    if engine and status['oom_killed'] and not status['running']:
        oom = 'container'
    elif engine and status['running'] and (status.get('oom_events') or (
            status['oom_killed'] and (status.get('stop') or 0) >= time.time() - OOM_LOOKBACK)):
        # running again (its restart policy) after a recent OOM kill: the engine's OOMKilled of the
        # last exit (engines that keep it while the container runs) or its oom events (engines that
        # clear it on the restart); an OOM long before this run is not evidence of anything now
        oom = 'container_restarted'
    elif any(re.search(r'\bMemoryError\b|Cannot allocate memory', line) for line in run) and not status['running']:
        oom = 'memory_error'
    elif signal_name == 'SIGKILL' and exit_ev and kernel_oom_killed(exit_ev.get('pid'), kernel_log):
        oom = 'kernel_oom_kill'
    oom_kills = cgroup_oom_kills(stack_dir, name) if stack_dir and not engine else None
    if oom is None and signal_name == 'SIGKILL' and kernel_log is None and oom_kills:
        # no readable kernel log: the cgroup's counter is the only (cumulative) evidence
        oom = 'cgroup'
    state = status['state'].lower()
    exit_class = classify_exit('running' if status['running'] else state, exit_code, signal_name, run,
                               oom_killed=oom is not None, spawn_error=status.get('spawnerr'))
    info = dict(
        state=status['state'], running=status['running'], pid=status['pid'], uptime=status['uptime'],
        start=status.get('start'), stop=status.get('stop'),
        exit_code=exit_code, signal=signal_name, shell_exit_code=shell_exit_code(exit_code, signal_name),
        exit_class=exit_class, oom=oom, cgroup_oom_kills=oom_kills,
        restarts=status['restart_count'] if engine else restart_count(events), health=status.get('health'),
        spawnerr=redact(status.get('spawnerr') or ''), logfile=status.get('logfile'),
        log_tail=redact.lines(svc_lines[-log_lines:]) if log_lines else [],
        addresses=status.get('addresses') or [],
    )
    if not status['running']:
        err, evidence = startup_error(svc_lines)
        info['evidence'] = redact.lines(evidence)
        info['traceback'] = redact.lines(last_traceback(run))
        if exit_class in ('startup_failure', 'crash') and err:
            info['startup_error'] = redact(err)
            cause = classify_cause(err)
            info['startup_error_cause'] = cause if cause != 'unknown' else classify_cause(' '.join(evidence))
    return info


def main():
    argument_spec = runtime_argument_spec()
    argument_spec.update(
        services=dict(type='list', elements='str'),
        log_lines=dict(type='int', default=40),
        env_file=dict(type='path'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    stack_dir = p['stack_dir']
    if not os.path.isdir(stack_dir):
        module.warn("stack_dir %s does not exist: every service is reported down (check cullis_stack_dir)" % stack_dir)
    env = read_env_file(p['env_file'] or os.path.join(stack_dir, '.env'))
    secrets = secret_values_from_env(env)
    # read from the .env: Ansible masks them like no_log options (not short values such as
    # JWT_ACCESS_TOKEN_EXPIRE_MINUTES=30, which would mask every "30" of the result)
    protect(module, *[v for v in secrets if len(v) >= 8])
    redact = Redactor(secrets)
    try:
        rt = get_runtime(p['runtime'], stack_dir, timeout=p['timeout'], **runtime_options(p))
        daemon = rt.daemon_running()
        names = p['services'] or rt.services()
        sup_lines = supervisor_log_lines(stack_dir)
        kernel_log = dmesg_lines()
        services = {}
        for name in names:
            status = rt.status(name)
            if (status.get('running') and status.get('restart_count') and not status.get('oom_killed')
                    and hasattr(rt, 'oom_events')):
                status['oom_events'] = rt.oom_events(name, since=time.time() - OOM_LOOKBACK)
            svc_lines = rt.logs(name, ANALYSIS_LINES).splitlines()
            services[name] = describe(name, status, svc_lines, sup_lines, redact, max(p['log_lines'], 0),
                                      stack_dir, kernel_log)
    except RuntimeErrorCullis as e:
        module.fail_json(msg=redact(str(e)))
    module.exit_json(changed=False, daemon_running=daemon, services=services,
                     down=sorted(n for n, s in services.items() if not s['running']))


if __name__ == '__main__':
    main()
