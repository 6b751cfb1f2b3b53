# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_disk.py, the one definition of disk usage (disk_usage_info, host_preflight_info, stack_info):
the figures equal the real df -P and du -sk on this machine, and used_percent is df's Use% with
df's rounding (up to a whole percent)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

from ansible_collections.cullis.broker.plugins.module_utils import _disk
from ansible_collections.cullis.broker.plugins.module_utils._host_preflight import free_space
from ansible_collections.cullis.broker.plugins.module_utils._stack_info import disk_usage


def test_used_percent_is_dfs_use_percent_rounded_up():
    assert _disk.used_percent(0, 100) == 0
    assert _disk.used_percent(1, 199) == 1          # 0.5 % -> 1, as df prints it
    assert _disk.used_percent(50, 50) == 50
    assert _disk.used_percent(999, 1) == 100        # 99.9 % -> 100: full for a non-root service
    assert _disk.used_percent(95, 0) == 100         # root's reserve left, nothing available to others
    assert _disk.used_percent(0, 0) is None         # df prints '-'


def _df(path):
    out = subprocess.run(['df', '-P', '-k', path], capture_output=True, text=True, check=True, env={'LC_ALL': 'C'})
    cols = out.stdout.splitlines()[-1].split()
    return dict(total_kib=int(cols[1]), used_kib=int(cols[2]), avail_kib=int(cols[3]), pct=int(cols[4].rstrip('%')))


def test_used_percent_on_dfs_own_figures_is_dfs_use_percent(tmp_path):
    """The definition and the rounding, exactly: fed df's own Used and Available, used_percent
    prints df's Use% (no race with other writers: one df call)."""
    df = _df(str(tmp_path))
    assert _disk.used_percent(df['used_kib'], df['avail_kib']) == df['pct']


def test_filesystem_usage_matches_df_for_a_path_not_created_yet(tmp_path):
    """The figures are df's, read between two df calls; other processes write to this shared disk
    meanwhile, so the bytes are compared within the drift seen plus 256 MiB, the percentage within
    the two df readings."""
    before = _df(str(tmp_path))
    fs = _disk.filesystem_usage(str(tmp_path / 'not-yet' / 'created'))
    after = _df(str(tmp_path))
    slack = 256 * 1024
    assert fs['path'] == str(tmp_path / 'not-yet' / 'created') and fs['checked'] == str(tmp_path)
    assert fs['total_bytes'] // 1024 == after['total_kib']
    for key, kib in (('used_bytes', 'used_kib'), ('free_bytes', 'avail_kib')):
        low, high = sorted((before[kib], after[kib]))
        assert low - slack <= fs[key] // 1024 <= high + slack, (key, fs[key] // 1024, before[kib], after[kib])
    low, high = sorted((before['pct'], after['pct']))
    assert isinstance(fs['used_percent'], int) and low - 1 <= fs['used_percent'] <= high + 1
    assert fs['used_percent'] == _disk.used_percent(fs['used_bytes'], fs['free_bytes'])
    assert fs['free_mb'] == fs['free_bytes'] // (1024 * 1024)


def test_host_preflight_and_stack_info_report_the_same_definition(tmp_path):
    path = str(tmp_path / 'stack')
    keys = ('path', 'checked', 'total_bytes', 'total_mb')
    pre, stack, own = free_space([path])[0], disk_usage(path), _disk.filesystem_usage(path)
    assert set(pre) == set(stack) == set(own)
    assert [pre[k] for k in keys] == [stack[k] for k in keys] == [own[k] for k in keys]
    # same formula: recomputed from each module's own bytes, the percentage is df's
    for entry in (pre, stack):
        assert entry['used_percent'] == _disk.used_percent(entry['used_bytes'], entry['free_bytes'])


def _du_kib(path):
    out = subprocess.run(['du', '-s', '-k', path], capture_output=True, text=True, check=True, env={'LC_ALL': 'C'})
    return int(out.stdout.split()[0])


def test_directory_size_equals_du_hard_links_once_symlinks_not_followed(tmp_path):
    tree = tmp_path / 'data'
    (tree / 'sub' / 'deeper').mkdir(parents=True)
    (tree / 'a.bin').write_bytes(os.urandom(300 * 1024))
    (tree / 'sub' / 'b.bin').write_bytes(os.urandom(70 * 1024 + 5))
    (tree / 'sub' / 'deeper' / 'c.txt').write_text('x')
    os.link(str(tree / 'a.bin'), str(tree / 'sub' / 'a-again.bin'))           # counted once
    outside = tmp_path / 'big-outside.bin'
    outside.write_bytes(os.urandom(1024 * 1024))
    os.symlink(str(outside), str(tree / 'link-to-big'))                          # not followed
    size = _disk.directory_size(str(tree))
    assert size['exists'] and size['unreadable'] == 0
    assert -(-size['bytes'] // 1024) == _du_kib(str(tree))
    assert size['bytes'] < 1024 * 1024  # neither the second name of a.bin nor the symlink target counted
    missing = str(tmp_path / 'missing')
    assert _disk.directory_size(missing) == dict(path=missing, exists=False, bytes=0, unreadable=0)
