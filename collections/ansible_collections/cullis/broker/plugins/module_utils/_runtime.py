# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: the runtime interface of a Cullis stack (start/stop/restart/status/logs).

Not a public API of the collection. Every module and playbook that controls a service of the
stack goes through `get_runtime()`, so the way services run (`process` = one supervisord per
stack, `compose` = the containers of a compose project, see _runtime_compose.py) is decided in one
place.

`ProcessRuntime` talks to the stack's supervisord over its XML-RPC API on the unix socket
`<stack_dir>/supervisor/supervisor.sock` (standard library only). Layout it relies on, written
by the `supervisor` role:

    <stack_dir>/supervisor/supervisord.conf      main config ([include] conf.d/*.conf)
    <stack_dir>/supervisor/conf.d/<service>.conf one [program:<service>] per service
    <stack_dir>/supervisor/supervisor.sock       XML-RPC socket (0700)
    <stack_dir>/supervisor/supervisord.pid       daemon pid file
    <stack_dir>/logs/<service>.log               stdout+stderr of each service

`ComposeRuntime` (_runtime_compose.py) provides the same methods: `daemon_running()`, `ensure_daemon()`,
`services()`, `status(name)`, `apply_config(name)`, `start(name)`, `stop(name)`,
`restart(name)`, `reload(name)`, `logs(name, lines)`, `shutdown()`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import socket
import subprocess
import sys
import time

try:  # Python 3
    import http.client as http_client
    import xmlrpc.client as xmlrpc_client
except ImportError:  # pragma: no cover - Python 2 is not supported
    http_client = None
    xmlrpc_client = None

RUNTIMES = ('process', 'compose')

# supervisord process states (supervisor.states.ProcessStates)
RUNNING_STATES = ('RUNNING',)
STARTING_STATES = ('STARTING', 'BACKOFF')
DOWN_STATES = ('STOPPED', 'EXITED', 'FATAL', 'UNKNOWN', 'ABSENT')


class RuntimeErrorCullis(Exception):
    """A failure to control a service, with a message fit for an operator (never a secret)."""


def runtime_argument_spec():
    """Options of every module that reaches the stack through its runtime (doc fragment: runtime)."""
    return dict(
        stack_dir=dict(type='path', required=True),
        runtime=dict(type='str', default='process', choices=list(RUNTIMES)),
        timeout=dict(type='float', default=60),
        compose_project_dir=dict(type='path'),
        compose_project=dict(type='str'),
        compose_services=dict(type='dict', default={}),
        docker_host=dict(type='str'),
    )


def runtime_options(params):
    """The compose runtime's keyword arguments of get_runtime() from a module's params."""
    return dict(project_dir=params.get('compose_project_dir'), project_name=params.get('compose_project'),
                services=params.get('compose_services') or {}, docker_host=params.get('docker_host'))


def get_runtime(kind, stack_dir, timeout=60.0, **compose_options):
    """Return the runtime object for `cullis_runtime` = kind (compose_options: see runtime_options())."""
    if kind == 'process':
        return ProcessRuntime(stack_dir, timeout=timeout)
    if kind == 'compose':
        from ansible_collections.cullis.broker.plugins.module_utils._runtime_compose import ComposeRuntime
        return ComposeRuntime(stack_dir, timeout=timeout, **compose_options)
    raise RuntimeErrorCullis("unknown runtime %r (expected one of %s)" % (kind, ', '.join(RUNTIMES)))


def tail_file(path, lines=100, max_bytes=1024 * 1024):
    """Last `lines` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except (IOError, OSError):
        return ''
    text = data.decode('utf-8', 'replace')
    return '\n'.join(text.splitlines()[-lines:]) if lines else text


def pid_alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie still answers kill(0); treat it as gone
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except (IOError, OSError, IndexError):
        return True


def status_from_info(info, now=None):
    """Normalise supervisord's getProcessInfo() dict into the runtime-neutral status dict.

    Keys: name, state (RUNNING/STOPPED/EXITED/FATAL/BACKOFF/STARTING/STOPPING/ABSENT),
    running, pid, uptime (s, 0 when down), start, stop (epoch s, 0 = never), exitstatus,
    spawnerr, description, logfile.
    """
    if info is None:
        return dict(name=None, state='ABSENT', running=False, pid=None, uptime=0, start=0, stop=0,
                    exitstatus=None, spawnerr='', description='not configured', logfile=None)
    state = info.get('statename', 'UNKNOWN')
    running = state == 'RUNNING'
    now = info.get('now') or now or int(time.time())
    start = info.get('start') or 0
    return dict(
        name=info.get('name'),
        state=state,
        running=running,
        pid=info.get('pid') or None if running or state in ('STARTING', 'STOPPING') else None,
        uptime=max(0, now - start) if running and start else 0,
        start=start,
        stop=info.get('stop') or 0,
        exitstatus=info.get('exitstatus'),
        spawnerr=info.get('spawnerr') or '',
        description=info.get('description', ''),
        logfile=info.get('stdout_logfile') or info.get('logfile'),
    )


if http_client is not None:
    class _UnixHTTPConnection(http_client.HTTPConnection):
        def __init__(self, path, timeout):
            http_client.HTTPConnection.__init__(self, 'localhost', timeout=timeout)
            self._path = path

        def connect(self):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self._path)
            self.sock = sock

    class _UnixTransport(xmlrpc_client.Transport):
        def __init__(self, path, timeout):
            xmlrpc_client.Transport.__init__(self)
            self._path = path
            self._timeout = timeout

        def make_connection(self, host):
            return _UnixHTTPConnection(self._path, self._timeout)


class RuntimeBase(object):
    """What every runtime does the same way on top of its status/start/stop/signal."""

    def restart(self, name):
        self.stop(name)
        self.start(name)
        return True

    def reload(self, name, sig='HUP'):
        """Ask a running service to re-read its config/certificates (SIGHUP); starts it when down."""
        st = self.status(name)
        if not st['running']:
            return self.start(name)
        self.signal(name, sig)
        return True


class ProcessRuntime(RuntimeBase):
    """`cullis_runtime: process`: the services of one stack under one supervisord."""

    kind = 'process'

    def __init__(self, stack_dir, timeout=60.0, rpc_timeout=30.0):
        self.stack_dir = os.path.abspath(stack_dir)
        self.dir = os.path.join(self.stack_dir, 'supervisor')
        self.conf = os.path.join(self.dir, 'supervisord.conf')
        self.sock = os.path.join(self.dir, 'supervisor.sock')
        self.pidfile = os.path.join(self.dir, 'supervisord.pid')
        self.log_dir = os.path.join(self.stack_dir, 'logs')
        self.timeout = timeout
        self.rpc_timeout = rpc_timeout

    # ---- daemon --------------------------------------------------------------------------
    def _proxy(self):
        return xmlrpc_client.ServerProxy('http://localhost', transport=_UnixTransport(self.sock, self.rpc_timeout),
                                         allow_none=True)

    def _call(self, method, *args):
        try:
            target = self._proxy()
            for part in method.split('.'):
                target = getattr(target, part)
            return target(*args)
        except xmlrpc_client.Fault as exc:
            raise RuntimeErrorCullis('supervisord refused %s%r: %s' % (method, args, exc.faultString))
        except (socket.error, OSError, http_client.HTTPException) as exc:
            raise RuntimeErrorCullis('cannot reach the stack supervisord at %s (%s); is the stack up? '
                                     'run playbooks/deploy.yml' % (self.sock, exc))

    def daemon_pid(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip() or 0)
        except (IOError, OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def daemon_running(self):
        if not os.path.exists(self.sock):
            return False
        try:
            return self._call('supervisor.getState').get('statename') == 'RUNNING'
        except RuntimeErrorCullis:
            return False

    def supervisord_bin(self):
        candidate = os.path.join(os.path.dirname(sys.executable), 'supervisord')
        if os.path.exists(candidate):
            return candidate
        for d in os.environ.get('PATH', '').split(os.pathsep) + ['/usr/bin', '/usr/local/bin']:
            path = os.path.join(d, 'supervisord')
            if os.path.exists(path):
                return path
        raise RuntimeErrorCullis('supervisord not found next to %s nor on PATH: run scripts/bootstrap.sh'
                                 % sys.executable)

    def ensure_daemon(self):
        """Start the stack's supervisord if it is not running. Returns True when it was started."""
        if self.daemon_running():
            return False
        if not os.path.exists(self.conf):
            raise RuntimeErrorCullis('%s does not exist: deploy the stack first (playbooks/deploy.yml)' % self.conf)
        stale = self.daemon_pid()
        if stale:
            raise RuntimeErrorCullis('supervisord (pid %s) runs but does not answer on %s; stop it by its pid '
                                     'and re-run the deploy' % (stale, self.sock))
        env = dict(PATH='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                   LANG='C.UTF-8', HOME=os.environ.get('HOME', '/root'))
        proc = subprocess.Popen([self.supervisord_bin(), '-c', self.conf], env=env, cwd=self.dir,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                close_fds=True)
        out = proc.communicate(timeout=self.timeout)[0]
        if proc.returncode != 0:
            raise RuntimeErrorCullis('supervisord -c %s failed (exit %s): %s'
                                     % (self.conf, proc.returncode, out.decode('utf-8', 'replace')[-500:]))
        self._wait(self.daemon_running, 'supervisord to answer on %s' % self.sock)
        return True

    def shutdown(self):
        """Stop every service (each with its grace period, then SIGKILL) and supervisord itself."""
        pid = self.daemon_pid()
        if not self.daemon_running():
            if pid:
                os.kill(pid, signal.SIGTERM)
                self._wait(lambda: not pid_alive(pid), 'supervisord pid %s to exit' % pid, timeout=120)
                return True
            return False
        self._call('supervisor.shutdown')
        if pid:
            self._wait(lambda: not pid_alive(pid), 'supervisord pid %s to exit' % pid, timeout=120)
        return True

    # ---- services ------------------------------------------------------------------------
    def services(self):
        """Names of the configured services (empty when supervisord is not running)."""
        if not self.daemon_running():
            return []
        return sorted(i['name'] for i in self._call('supervisor.getAllProcessInfo'))

    def raw_info(self, name):
        try:
            return self._call('supervisor.getProcessInfo', name)
        except RuntimeErrorCullis as exc:
            if 'BAD_NAME' in str(exc):
                return None
            raise

    def status(self, name):
        """Status dict of one service (see status_from_info); state ABSENT when unknown or daemon down."""
        if not self.daemon_running():
            st = status_from_info(None)
            st.update(name=name, description='supervisord of the stack is not running',
                      logfile=self.logfile(name))
            return st
        st = status_from_info(self.raw_info(name))
        st['name'] = name
        st['logfile'] = st['logfile'] or self.logfile(name)
        return st

    def config_changes(self):
        """(added, changed, removed) program names between supervisord's memory and conf.d on disk."""
        result = self._call('supervisor.reloadConfig')
        added, changed, removed = result[0]
        return added, changed, removed

    def pending_config(self, name):
        """'added', 'changed' or None for one service, without applying anything.

        supervisord's reloadConfig only compares, it applies nothing until add/removeProcessGroup.
        """
        if not self.daemon_running():
            return 'added'
        added, changed, dummy = self.config_changes()
        if name in added:
            return 'added'
        if name in changed:
            return 'changed'
        return None

    def apply_config(self, name):
        """Load a new or changed program config; a running changed service is restarted. Returns the change."""
        change = self.pending_config(name)
        if change is None:
            return None
        if change == 'changed':
            was_running = self.status(name)['running']
            if was_running:
                self._call('supervisor.stopProcess', name, True)
            self._call('supervisor.removeProcessGroup', name)
            self._call('supervisor.addProcessGroup', name)
            if was_running:
                self.start(name)
        else:
            self._call('supervisor.addProcessGroup', name)
        return change

    def start(self, name):
        st = self.status(name)
        if st['state'] == 'ABSENT':
            raise RuntimeErrorCullis('service %r is not configured in %s/conf.d' % (name, self.dir))
        if st['running']:
            return False
        if st['state'] in STARTING_STATES:
            self._wait_state(name)
            return True
        try:
            self._call('supervisor.startProcess', name, True)
        except RuntimeErrorCullis:
            pass  # reported with the real state below
        st = self._wait_state(name)
        if not st['running']:
            raise RuntimeErrorCullis('service %s did not start: state %s, exit status %s%s; see %s'
                                     % (name, st['state'], st['exitstatus'],
                                        (', ' + st['spawnerr']) if st['spawnerr'] else '', st['logfile']))
        return True

    def _wait_state(self, name):
        deadline = time.time() + self.timeout
        st = self.status(name)
        while st['state'] in STARTING_STATES and time.time() < deadline:
            time.sleep(0.2)
            st = self.status(name)
        return st

    def stop(self, name):
        """Stop a service: its stop signal, the grace period (stopwaitsecs), then SIGKILL."""
        st = self.status(name)
        if st['state'] in ('ABSENT',) or not (st['running'] or st['state'] in STARTING_STATES + ('STOPPING',)):
            return False
        try:
            self._call('supervisor.stopProcess', name, True)
        except RuntimeErrorCullis as exc:
            if 'NOT_RUNNING' not in str(exc):
                raise
        return True

    def signal(self, name, sig):
        self._call('supervisor.signalProcess', name, sig)

    def logfile(self, name):
        return os.path.join(self.log_dir, '%s.log' % name)

    def logs(self, name, lines=100):
        """Last lines of the service's log (stdout and stderr together)."""
        return tail_file(self.logfile(name), lines)

    def _wait(self, check, what, timeout=None):
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise RuntimeErrorCullis('timed out after %ss waiting for %s' % (timeout or self.timeout, what))
