# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal module_utils: `cullis_runtime: compose`, the stack's services as containers of a compose project.

Not a public API of the collection. `ComposeRuntime` provides the methods of the runtime interface
(see _runtime.py) for a Docker Compose v2 project:

- the project is a directory (`cullis_compose_project_dir`, default `<stack_dir>/compose`) holding
  its compose file; its containers are found on the engine by the labels Compose puts on them
  (`com.docker.compose.project.working_dir` = that directory, or `com.docker.compose.project` when a
  project name is given), so a project the collection did not create (an upstream
  `deploy/compose/` deployment) is driven the same way;
- the service-name map (`cullis_compose_services`) maps the collection's service names (postgres,
  redis, vault, broker, nginx) to the project's own; unmapped names are used as they are;
- the engine address is `docker_host` (`cullis_docker_host`), else `DOCKER_HOST`, else the
  engine's default socket;
- state, exit code, OOM kill, restart count and health come from the engine (`docker inspect`),
  logs from `docker logs`; start/stop/restart/reload(signal) go through the Docker SDK (PyPI
  `docker`) on the managed host; creating or re-creating a container from the project's config
  (`apply_config`, and `start` of a service that has no container yet) runs `docker compose up`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import signal as signal_mod
import subprocess
import time

from ansible_collections.cullis.broker.plugins.module_utils._runtime import RuntimeBase, RuntimeErrorCullis

try:
    import docker
    from docker.errors import APIError, DockerException, NotFound
    HAS_DOCKER = True
except ImportError:  # reported when the runtime is used, not at import
    docker = None
    HAS_DOCKER = False

    class DockerException(Exception):
        pass

    class APIError(DockerException):
        explanation = None

    class NotFound(APIError):
        pass

LABEL_PROJECT = 'com.docker.compose.project'
LABEL_WORKDIR = 'com.docker.compose.project.working_dir'
LABEL_SERVICE = 'com.docker.compose.service'
LABEL_ONEOFF = 'com.docker.compose.oneoff'
LABEL_CONFIG_HASH = 'com.docker.compose.config-hash'
LABEL_CONFIG_FILES = 'com.docker.compose.project.config_files'
COMPOSE_FILES = ('compose.yaml', 'compose.yml', 'docker-compose.yaml', 'docker-compose.yml')


def parse_docker_time(value):
    """Epoch seconds of a Docker timestamp ('2026-11-30T03:25:57.123456789Z'); 0 for the zero time."""
    if not value or value.startswith('0001-'):
        return 0
    import calendar
    base = value.rstrip('Z').split('.')[0]
    try:
        return calendar.timegm(time.strptime(base, '%Y-%m-%dT%H:%M:%S'))
    except ValueError:
        return 0


def signal_of_exit(exit_code):
    """Name of the signal a container's exit code stands for (137 -> SIGKILL), or None."""
    if exit_code is None or exit_code <= 128 or exit_code > 128 + 64:
        return None
    try:
        return signal_mod.Signals(exit_code - 128).name
    except ValueError:
        return None


def status_from_inspect(name, attrs, now=None):
    """The runtime-neutral status dict (see _runtime.status_from_info) from `docker inspect` of a container.

    Extra keys of this runtime: container, container_id, image, exit_code, signal, oom_killed,
    restart_count, health (none/starting/healthy/unhealthy), error, addresses (the container's IP
    addresses on its networks, which the engine's host reaches; none on the host's network).
    """
    if attrs is None:
        return dict(name=name, state='ABSENT', running=False, pid=None, uptime=0, start=0, stop=0,
                    exitstatus=None, spawnerr='', description='no container for this service',
                    logfile=None, container=None, container_id=None, image=None, exit_code=None,
                    signal=None, oom_killed=False, restart_count=0, health='none', error='', addresses=[])
    st = attrs.get('State') or {}
    status = st.get('Status', 'unknown')
    now = now or int(time.time())
    start = parse_docker_time(st.get('StartedAt'))
    stop = parse_docker_time(st.get('FinishedAt'))
    exit_code = st.get('ExitCode')
    error = st.get('Error') or ''
    if status == 'running' and not st.get('Restarting'):
        state = 'RUNNING'
    elif status == 'restarting' or st.get('Restarting'):
        state = 'BACKOFF'
    elif status == 'created':
        state = 'STOPPED' if not error else 'FATAL'
        exit_code = None if not error else exit_code
    elif status in ('exited', 'dead'):
        state = 'STOPPED' if exit_code == 0 and not st.get('OOMKilled') else 'EXITED'
    elif status == 'paused':
        state = 'STOPPED'
    else:
        state = 'UNKNOWN'
    running = state == 'RUNNING'
    health = ((st.get('Health') or {}).get('Status')) or 'none'
    cname = (attrs.get('Name') or '').lstrip('/')
    signal_name = None if running else signal_of_exit(exit_code)
    desc = '%s (container %s%s)' % (status, cname, ', %s' % health if health != 'none' else '')
    return dict(
        name=name, state=state, running=running,
        pid=st.get('Pid') or None if running else None,
        uptime=max(0, now - start) if running and start else 0,
        start=start, stop=stop,
        exitstatus=None if running else exit_code,
        spawnerr=error, description=desc,
        logfile='docker logs %s' % cname,
        container=cname, container_id=attrs.get('Id'),
        image=(attrs.get('Config') or {}).get('Image'),
        exit_code=None if running else exit_code, signal=signal_name,
        oom_killed=bool(st.get('OOMKilled')), restart_count=attrs.get('RestartCount') or 0,
        health=health, error=error,
        addresses=[net.get('IPAddress') for net in ((attrs.get('NetworkSettings') or {}).get('Networks') or {}).values()
                   if net and net.get('IPAddress')],
    )


class ComposeRuntime(RuntimeBase):
    """`cullis_runtime: compose`: the services of one stack as containers of one compose project."""

    kind = 'compose'

    def __init__(self, stack_dir, timeout=60.0, project_dir=None, services=None, docker_host=None,
                 project_name=None, stop_grace=10, client=None, compose_command=None):
        self.stack_dir = os.path.abspath(stack_dir)
        self.project_dir = os.path.abspath(project_dir or os.path.join(self.stack_dir, 'compose'))
        self.service_map = dict(services or {})
        self.docker_host = docker_host or os.environ.get('DOCKER_HOST') or None
        self.project_name = project_name or None
        self.timeout = timeout
        self.stop_grace = stop_grace
        self._client = client
        self._compose_command = compose_command

    # ---- engine --------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            if not HAS_DOCKER:
                raise RuntimeErrorCullis("cullis_runtime: compose needs the Docker SDK for Python (PyPI 'docker') "
                                         "in the managed host's Python: pip install docker")
            try:
                self._client = docker.DockerClient(base_url=self.docker_host, timeout=max(30, int(self.timeout)))
            except DockerException as exc:
                raise RuntimeErrorCullis('cannot reach the Docker engine at %s (%s); set cullis_docker_host'
                                         % (self.engine_address(), exc))
        return self._client

    def engine_address(self):
        return self.docker_host or 'unix:///var/run/docker.sock'

    def _engine(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotFound:
            raise
        except APIError as exc:
            raise RuntimeErrorCullis('the Docker engine at %s refused to %s: %s'
                                     % (self.engine_address(), what, exc.explanation or exc))
        except DockerException as exc:
            raise RuntimeErrorCullis('cannot reach the Docker engine at %s to %s (%s); is dockerd running? '
                                     'check cullis_docker_host' % (self.engine_address(), what, exc))

    def daemon_running(self):
        try:
            return bool(self.client.ping())
        except Exception:  # pylint: disable=broad-except  # any failure means: not answering
            return False

    def ensure_daemon(self):
        """The engine is not ours to start: fail with what to do when it does not answer."""
        if not self.daemon_running():
            raise RuntimeErrorCullis('the Docker engine at %s does not answer; start dockerd on this host '
                                     '(or set cullis_docker_host to its address)' % self.engine_address())
        return False

    # ---- project ---------------------------------------------------------------------------
    def compose_service(self, name):
        """The project's service name for one of the collection's service names."""
        return self.service_map.get(name, name)

    def logical_name(self, compose_name):
        for logical, actual in self.service_map.items():
            if actual == compose_name:
                return logical
        return compose_name

    def _project_filters(self):
        if self.project_name:
            return ['%s=%s' % (LABEL_PROJECT, self.project_name)]
        return ['%s=%s' % (LABEL_WORKDIR, self.project_dir)]

    def _containers(self, compose_name=None):
        labels = self._project_filters()
        if compose_name:
            labels.append('%s=%s' % (LABEL_SERVICE, compose_name))
        found = self._engine('list the project containers', self.client.containers.list,
                             all=True, filters={'label': labels})
        return [c for c in found if c.labels.get(LABEL_ONEOFF, 'False') != 'True']

    def container(self, name):
        """The service's container (the newest when scaled or re-created), or None."""
        found = self._containers(self.compose_service(name))
        if not found:
            return None
        return sorted(found, key=lambda c: c.attrs.get('Created', ''))[-1]

    def services(self):
        """The collection's names of the services that have a container in the project."""
        if not self.daemon_running():
            return []
        return sorted(set(self.logical_name(c.labels.get(LABEL_SERVICE)) for c in self._containers()))

    def status(self, name):
        if not self.daemon_running():
            st = status_from_inspect(name, None)
            st['description'] = 'the Docker engine at %s does not answer' % self.engine_address()
            return st
        c = self.container(name)
        if c is not None:
            try:
                c.reload()
            except NotFound:
                c = None
        return status_from_inspect(name, c.attrs if c is not None else None)

    def oom_events(self, name, since):
        """Epoch times of the engine's `oom` events for the service's current container since `since`.

        Under `restart: always` / `unless-stopped` (upstream's prod file) an over-limit broker flaps
        between a short start and a restart back-off. Engines differ in what the running phase
        shows: the test kit's dockerd keeps State.OOMKilled (and FinishedAt) of the last exit while
        the container runs again; engines that clear it on the restart leave only their event log,
        which they keep in memory for recent events (service_info asks only then)."""
        c = self.container(name)
        if c is None:
            return []
        now = int(time.time())
        try:
            events = self.client.events(since=int(since), until=now, decode=True,
                                        filters={'container': c.id, 'event': 'oom'})
            return sorted(int(e.get('time') or 0) for e in events)
        except DockerException:  # the engine's event log is extra evidence: without it, the state alone
            return []

    # ---- compose CLI (create / re-create from the project's config) ------------------------
    def compose_command(self):
        if self._compose_command:
            return list(self._compose_command)
        docker_cli = shutil.which('docker')
        if docker_cli:
            probe = subprocess.run([docker_cli, 'compose', 'version'], env=self._env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, check=False)
            if probe.returncode == 0:
                return [docker_cli, 'compose']
        legacy = shutil.which('docker-compose')
        if legacy:
            return [legacy]
        raise RuntimeErrorCullis('neither `docker compose` (the Compose v2 plugin) nor docker-compose is on PATH '
                                 'of the managed host')

    def _env(self):
        env = dict(os.environ)
        if self.docker_host:
            env['DOCKER_HOST'] = self.docker_host
        return env

    def compose_file(self):
        for fname in COMPOSE_FILES:
            path = os.path.join(self.project_dir, fname)
            if os.path.exists(path):
                return path
        raise RuntimeErrorCullis('no compose file (%s) in %s: deploy the stack with cullis_runtime: compose, or '
                                 'set cullis_compose_project_dir to the directory of your compose project'
                                 % (', '.join(COMPOSE_FILES), self.project_dir))

    def compose_files(self):
        """The compose files the project's containers were made from (e.g. upstream's docker-compose.yml plus
        docker-compose.prod.yml), else the compose file of the project directory."""
        if self.daemon_running():
            for c in self._containers():
                files = [f for f in c.labels.get(LABEL_CONFIG_FILES, '').split(',') if f]
                if files and all(os.path.exists(f) for f in files):
                    return files
        return [self.compose_file()]

    def compose(self, *args):
        cmd = self.compose_command() + ['--project-directory', self.project_dir]
        for path in self.compose_files():
            cmd += ['-f', path]
        if self.project_name:
            cmd += ['-p', self.project_name]
        proc = subprocess.run(cmd + list(args), cwd=self.project_dir, env=self._env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=max(self.timeout, 120), check=False)
        out = proc.stdout.decode('utf-8', 'replace')
        if proc.returncode != 0:
            raise RuntimeErrorCullis('docker compose %s failed (exit %s): %s'
                                     % (' '.join(args), proc.returncode, out[-800:]))
        return out

    def config_hash(self, name):
        """Compose's hash of the service's current config in the project file."""
        svc = self.compose_service(name)
        for line in self.compose('config', '--hash', svc).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == svc:
                return parts[1]
        raise RuntimeErrorCullis('service %r is not defined in %s' % (svc, ', '.join(self.compose_files())))

    def pending_config(self, name):
        """'added' (no container), 'changed' (container made from another config) or None.

        Compose itself decides: `up --dry-run` says whether it would re-create the container. (The
        hash of `config --hash` is not the one `up` puts on the container when the service has an
        env_file - compose v2.40 hashes the resolved file then - so comparing the two re-created
        nothing and reported a change on every run.)"""
        c = self.container(name)
        if c is None:
            return 'added'
        out = self.compose('--dry-run', 'up', '-d', '--no-deps', '--no-build', self.compose_service(name))
        return 'changed' if any(line.split()[-1:] == ['Recreate'] for line in out.splitlines()) else None

    def apply_config(self, name):
        """Create or re-create the service's container from the project's config. Returns the change."""
        change = self.pending_config(name)
        if change is None:
            return None
        self.compose('up', '-d', '--no-deps', '--no-build', self.compose_service(name))
        self._check_started(name)
        return change

    # ---- control ---------------------------------------------------------------------------
    def _require(self, name):
        c = self.container(name)
        if c is None:
            raise RuntimeErrorCullis('service %r (compose service %r) has no container in the project at %s'
                                     % (name, self.compose_service(name), self.project_dir))
        return c

    def start(self, name):
        st = self.status(name)
        if st['running']:
            return False
        if st['state'] == 'ABSENT':
            self.compose('up', '-d', '--no-deps', '--no-build', self.compose_service(name))
        else:
            self._engine('start %s' % st['container'], self._require(name).start)
        self._check_started(name)
        return True

    def _check_started(self, name):
        st = self._wait_running(name)
        if not st['running']:
            raise RuntimeErrorCullis('service %s did not start: container %s is %s, exit code %s%s%s; see '
                                     'docker logs %s' % (name, st['container'], st['state'], st['exit_code'],
                                                         ', OOMKilled' if st['oom_killed'] else '',
                                                         (', ' + st['error']) if st['error'] else '',
                                                         st['container']))
        return st

    def _wait_running(self, name, settle=1.0):
        """Wait until the container runs (and stays up `settle` s) or has exited for good."""
        deadline = time.time() + self.timeout
        st = self.status(name)
        up_since = None
        while time.time() < deadline:
            if st['running']:
                up_since = up_since or time.time()
                if time.time() - up_since >= settle:
                    return st
            else:
                up_since = None
                if st['state'] not in ('BACKOFF', 'STARTING', 'UNKNOWN'):
                    return st
            time.sleep(0.2)
            st = self.status(name)
        return st

    def stop(self, name):
        """Stop the container: its stop signal, the grace period, then SIGKILL (docker stop)."""
        st = self.status(name)
        if not (st['running'] or st['state'] == 'BACKOFF'):
            return False
        self._engine('stop %s' % st['container'], self._require(name).stop, timeout=self.stop_grace)
        return True

    def signal(self, name, sig):
        """Send the container's main process a signal (docker kill -s), e.g. HUP for reload()."""
        c = self._require(name)
        self._engine('signal %s' % c.name, c.kill, signal=sig if sig.startswith('SIG') else 'SIG' + sig)

    def logs(self, name, lines=100):
        """Last lines of the container's output (stdout and stderr), '' without a container or an engine."""
        c = self.container(name) if self.daemon_running() else None
        if c is None:
            return ''
        data = self._engine('read the logs of %s' % c.name, c.logs, stdout=True, stderr=True,
                            tail=lines if lines else 'all')
        return data.decode('utf-8', 'replace').rstrip('\n')

    def shutdown(self):
        """Stop every container of the project (volumes and containers are kept). True when one ran."""
        running = [c for c in self._containers() if c.status in ('running', 'restarting')]
        for c in running:
            self._engine('stop %s' % c.name, c.stop, timeout=self.stop_grace)
        return bool(running)

    def logfile(self, name):
        """Where the service's log is: the container's output (`docker logs`), not a file."""
        c = self.container(name) if self.daemon_running() else None
        return 'docker logs %s' % (c.name if c is not None else self.compose_service(name))
