# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who owns a listening port: a real listener of this process, and (with the /proc readers faked)
a listener whose process cannot be seen, as for root in a container without CAP_SYS_PTRACE."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket

from ansible_collections.cullis.broker.plugins.module_utils import _host_preflight as h


def test_a_real_listener_of_this_process_is_seen_and_is_not_the_stacks():
    sock = socket.socket()
    try:
        sock.bind(('127.0.0.1', 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        entry = h.port_listeners([port], '/nonexistent-stack')[0]
    finally:
        sock.close()
    assert entry['listening'] and entry['owner_seen']
    assert os.getpid() in entry['pids']
    assert entry['ours'] is False


def _invisible_listener(monkeypatch, uid_pids, stack_pids):
    monkeypatch.setattr(h, '_listening_sockets', lambda port: {'4242': 105})
    monkeypatch.setattr(h, '_pids_of_inodes', lambda inodes: set())
    monkeypatch.setattr(h, '_pids_of_uid', lambda uid: uid_pids if uid == 105 else [])
    monkeypatch.setattr(h, '_supervisord_pid', lambda stack_dir: 10)
    monkeypatch.setattr(h, '_descends_from', lambda pid, ancestor: pid in stack_pids)
    monkeypatch.setattr(h, '_cmdline', lambda pid: 'postgres: checkpointer')


def test_an_invisible_listener_whose_user_runs_the_stacks_service_is_ours(monkeypatch):
    _invisible_listener(monkeypatch, uid_pids=[200, 201], stack_pids={200, 201})
    entry = h.port_listeners([5432], '/srv/cullis')[0]
    assert entry == dict(entry, listening=True, ours=True, owner_seen=False, pids=[200, 201])


def test_an_invisible_listener_of_a_user_without_a_stack_process_is_not_ours(monkeypatch):
    _invisible_listener(monkeypatch, uid_pids=[300], stack_pids={200})
    entry = h.port_listeners([5432], '/srv/cullis')[0]
    assert entry['listening'] and not entry['ours'] and not entry['owner_seen']
    assert entry['pids'] == [300]


def test_used_percent_is_dfs_use_percent(tmp_path):
    """postgres_down reads the disk usage from this instead of parsing df: same figure as df's Use%
    (used / (used + available to unprivileged users), rounded up as df does; test_disk.py compares exactly)."""
    import subprocess

    entry = h.free_space([str(tmp_path / 'not-yet' / 'created')])[0]
    assert entry['checked'] == str(tmp_path)
    df = subprocess.run(['df', '-P', str(tmp_path)], capture_output=True, text=True, check=True)
    df_pct = int(df.stdout.splitlines()[-1].split()[4].rstrip('%'))
    assert entry['used_percent'] in (df_pct - 1, df_pct, df_pct + 1)  # the disk may move in between
    assert isinstance(entry['used_percent'], int) and 0 < entry['used_percent'] <= 100
