# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the read-only host probes of a preflight (backend of host_preflight_info).

Not a public API of the collection. Linux only (reads /proc): who listens on a TCP port and
whether that process belongs to the stack (a descendant of the stack's supervisord, of the init
of one of the stack's compose containers, or a command line under the stack directory), free space under a path that may not exist yet (its nearest
existing parent), name resolution, the host's OS, Python and clock.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import platform
import socket
import time

from ansible_collections.cullis.broker.plugins.module_utils._disk import filesystem_usage

_LISTEN = '0A'


def _listening_sockets(port):
    """{inode: uid} of TCP listeners on `port` (any address, IPv4 and IPv6)."""
    inodes = {}
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) < 10 or cols[3] != _LISTEN:
                        continue
                    if int(cols[1].rsplit(':', 1)[1], 16) == port:
                        inodes[cols[9]] = int(cols[7])
        except (IOError, OSError):
            continue
    return inodes


def _pids_of_inodes(inodes):
    wanted = set('socket:[%s]' % i for i in inodes)
    pids = set()
    if not wanted:
        return pids
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        fd_dir = '/proc/%s/fd' % pid
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(os.path.join(fd_dir, fd)) in wanted:
                        pids.add(int(pid))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return pids


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()
    except (IOError, OSError):
        return ''


def _ppid(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return int(f.read().rsplit(')', 1)[1].split()[1])
    except (IOError, OSError, ValueError, IndexError):
        return 0


def _descends_from(pid, ancestor):
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        pid = _ppid(pid)
        seen += 1
    return False


def _supervisord_pid(stack_dir):
    if not stack_dir:
        return None
    try:
        with open(os.path.join(stack_dir, 'supervisor', 'supervisord.pid')) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (IOError, OSError, ValueError):
        return None


def _pids_of_uid(uid):
    pids = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                if os.stat('/proc/' + pid).st_uid == uid:
                    pids.append(int(pid))
            except OSError:
                continue
    return pids


def compose_container_pids(runtime):
    """Host PIDs of the init processes of the compose project's running containers (found on the
    engine by the project's labels, see _runtime_compose.ComposeRuntime); [] when the engine does not
    answer (then nothing on the ports can be told to be the project's)."""
    if not runtime.daemon_running():
        return []
    pids = []
    for name in runtime.services():
        c = runtime.container(name)
        pid = (c.attrs.get('State') or {}).get('Pid') if c is not None else 0
        if pid:
            pids.append(int(pid))
    return pids


def port_listeners(ports, stack_dir=None, container_pids=()):
    """[{port, listening, ours, pids, commands, owner_seen}] for each port. `container_pids`: the host
    PIDs of the stack's own containers' init processes (compose runtime, host networking)."""
    sup = _supervisord_pid(stack_dir)
    roots = ([sup] if sup is not None else []) + [p for p in container_pids if p]
    out = []
    for port in ports:
        sockets = _listening_sockets(int(port))
        pids = sorted(_pids_of_inodes(sockets))
        owner_seen = bool(pids) or not sockets
        if sockets and not pids:
            # The socket's process is not visible: reading another user's /proc/<pid>/fd needs
            # CAP_SYS_PTRACE, which root lacks in a container (PostgreSQL runs as its own user).
            # /proc/net/tcp still names the socket's uid: that user's processes stand in for it.
            pids = sorted(set(p for uid in set(sockets.values()) for p in _pids_of_uid(uid)))
        commands = [_cmdline(p) for p in pids]
        listening = bool(sockets)

        def stack_owned(pid, command):
            return any(_descends_from(pid, root) for root in roots) or bool(stack_dir and stack_dir in command)
        if owner_seen:
            ours = bool(pids) and all(stack_owned(p, c) for p, c in zip(pids, commands))
        else:  # the uid's processes include the stack's service: the listener is most likely it
            ours = any(stack_owned(p, c) for p, c in zip(pids, commands))
        out.append({'port': int(port), 'listening': listening, 'ours': ours, 'pids': pids,
                    'commands': [c[:200] for c in commands], 'owner_seen': owner_seen})
    return out


def free_space(paths):
    """[_disk.filesystem_usage(path)] for each path: the filesystem that will hold it (df's figures,
    used_percent = df's Use%, see module_utils/_disk.py)."""
    return [filesystem_usage(path) for path in paths]


def resolve(names):
    """[{name, resolved, addresses, error}]."""
    out = []
    for name in names:
        try:
            infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)
            addrs = sorted(set(i[4][0] for i in infos))
            out.append({'name': name, 'resolved': True, 'addresses': addrs, 'error': ''})
        except (socket.gaierror, UnicodeError) as e:
            out.append({'name': name, 'resolved': False, 'addresses': [], 'error': str(e)})
    return out


def os_release():
    info = {}
    try:
        with open('/etc/os-release') as f:
            for line in f:
                key, sep, value = line.strip().partition('=')
                if sep:
                    info[key] = value.strip('"')
    except (IOError, OSError):
        pass
    return {'id': info.get('ID', platform.system().lower()), 'version_id': info.get('VERSION_ID', ''),
            'pretty_name': info.get('PRETTY_NAME', platform.platform())}


def host_facts():
    return {'os': os_release(), 'python_version': platform.python_version(), 'epoch': time.time()}
