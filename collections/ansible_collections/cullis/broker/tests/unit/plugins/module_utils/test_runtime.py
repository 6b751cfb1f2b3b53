# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of the runtime interface (_runtime.py): status normalisation, log tails, factory."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cullis.broker.plugins.module_utils._runtime import (
    ProcessRuntime, RuntimeErrorCullis, get_runtime, status_from_info, tail_file)


def test_running_status_has_pid_and_uptime():
    info = dict(name='broker', statename='RUNNING', pid=4242, start=1000, stop=0, now=1060, exitstatus=0,
                spawnerr='', description='pid 4242, uptime 0:01:00', stdout_logfile='/s/logs/broker.log')
    st = status_from_info(info)
    assert st['running'] is True
    assert st['pid'] == 4242
    assert st['uptime'] == 60
    assert st['logfile'] == '/s/logs/broker.log'


def test_exited_status_keeps_exit_status_and_drops_pid():
    info = dict(name='broker', statename='EXITED', pid=0, start=1000, stop=1010, now=1060, exitstatus=3,
                spawnerr='', description='Nov 27 11:00 PM', stdout_logfile='/s/logs/broker.log')
    st = status_from_info(info)
    assert st['running'] is False
    assert st['pid'] is None
    assert st['uptime'] == 0
    assert st['exitstatus'] == 3
    assert st['stop'] == 1010


def test_fatal_status_reports_spawn_error():
    info = dict(name='vault', statename='FATAL', pid=0, start=0, stop=0, now=5, exitstatus=0,
                spawnerr="can't find command '/nope'", description='', stdout_logfile='')
    st = status_from_info(info)
    assert st['state'] == 'FATAL'
    assert "can't find command" in st['spawnerr']


def test_unknown_service_is_absent():
    st = status_from_info(None)
    assert st['state'] == 'ABSENT' and st['running'] is False and st['pid'] is None


def test_tail_file_returns_last_lines(tmp_path):
    log = tmp_path / 'x.log'
    log.write_text('\n'.join('line %d' % i for i in range(500)))
    assert tail_file(str(log), 3) == 'line 497\nline 498\nline 499'
    assert tail_file(str(tmp_path / 'missing.log'), 3) == ''


def test_factory_knows_process_and_compose_and_refuses_others(tmp_path):
    rt = get_runtime('process', str(tmp_path))
    assert isinstance(rt, ProcessRuntime)
    assert rt.sock == str(tmp_path / 'supervisor' / 'supervisor.sock')
    assert rt.logfile('nginx') == str(tmp_path / 'logs' / 'nginx.log')
    assert get_runtime('compose', str(tmp_path)).kind == 'compose'
    with pytest.raises(RuntimeErrorCullis, match='unknown runtime'):
        get_runtime('k8s', str(tmp_path))


def test_status_without_daemon_is_absent_not_an_error(tmp_path):
    rt = ProcessRuntime(str(tmp_path))
    assert rt.daemon_running() is False
    st = rt.status('broker')
    assert st['state'] == 'ABSENT' and 'not running' in st['description']
    assert rt.services() == []


def test_ensure_daemon_without_config_says_to_deploy(tmp_path):
    with pytest.raises(RuntimeErrorCullis, match='deploy the stack first'):
        ProcessRuntime(str(tmp_path)).ensure_daemon()
