# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: disk usage, the one definition every module reports.

Not a public API of the collection. Used by disk_usage_info, host_preflight_info and stack_info,
so an operator never sees two figures for the same disk:

- `filesystem_usage(path)` is what `df -P` prints for the filesystem holding `path` (or, for a
  path that does not exist yet, its nearest existing parent). `used_percent` is df's `Use%`,
  by df's definition AND df's rounding: used / (used + available to unprivileged users), rounded
  UP to a whole percent, an int. A service that does not run as root (PostgreSQL) sees its disk
  full at 100 even while root's reserve is left, and the figure equals the operator's `df`.
- `directory_size(path)` is what `du -sk` adds up: allocated blocks of every file and directory
  under `path`, symbolic links not followed, each hard-linked inode once.

Standard library only (os.statvfs, os.lstat), no df/du output parsed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

MIB = 1024 * 1024


def existing_parent(path):
    """`path` itself if it exists, else its nearest existing parent."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    return probe


def used_percent(used, available):
    """df's Use%: used / (used + available), rounded up to a whole percent; None when both are 0
    (df prints '-')."""
    usable = used + available
    if not usable:
        return None
    return -(-100 * used // usable)


def filesystem_usage(path):
    """Usage of the filesystem holding `path`: {path, checked, total_bytes, used_bytes, free_bytes,
    total_mb, free_mb, used_percent}; free = available to unprivileged users (df's Available)."""
    checked = existing_parent(path)
    st = os.statvfs(checked)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return dict(path=path, checked=checked, total_bytes=total, used_bytes=used, free_bytes=free,
                total_mb=total // MIB, free_mb=free // MIB, used_percent=used_percent(used, free))


def directory_size(path):
    """{path, exists, bytes, unreadable}: allocated bytes under `path` as `du -s` counts them
    (st_blocks * 512, symlinks not followed, hard links once); `unreadable` counts the entries that
    could not be read (their size is missing from `bytes`)."""
    seen = set()
    total = 0
    unreadable = [0]

    def count(st):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return 0
        seen.add(key)
        return st.st_blocks * 512

    try:
        top = os.lstat(path)
    except OSError:
        return dict(path=path, exists=False, bytes=0, unreadable=0)
    total += count(top)
    if stat.S_ISDIR(top.st_mode):
        def onerror(_e):
            unreadable[0] += 1

        for root, dirs, files in os.walk(path, onerror=onerror):
            for name in dirs + files:
                try:
                    total += count(os.lstat(os.path.join(root, name)))
                except OSError:
                    unreadable[0] += 1
    return dict(path=path, exists=True, bytes=total, unreadable=unreadable[0])
