# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logic of the compose runtime (_runtime_compose.py) with the Docker SDK boundary faked.

The engine itself is exercised in tests/e2e_compose (real dockerd); here: how `docker inspect`
becomes the runtime-neutral status, how services are found (project label, service-name map),
which SDK calls start/stop/reload make, and service_info's exit classes from a container's state.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

import pytest

from ansible_collections.cullis.broker.plugins.module_utils._runtime import RuntimeErrorCullis, get_runtime
from ansible_collections.cullis.broker.plugins.module_utils._runtime_compose import (
    LABEL_PROJECT, LABEL_SERVICE, LABEL_WORKDIR, ComposeRuntime, DockerException, parse_docker_time, signal_of_exit,
    status_from_inspect)
from ansible_collections.cullis.broker.plugins.module_utils._redact import Redactor
from ansible_collections.cullis.broker.plugins.modules.service_info import describe


def inspect(status='running', exit_code=0, oom=False, restarts=0, health=None, name='stack-broker-1',
            started='2026-11-30T03:00:00.5Z', finished='0001-01-01T00:00:00Z', error=''):
    state = dict(Status=status, Running=status == 'running', Restarting=status == 'restarting',
                 OOMKilled=oom, Pid=4242 if status == 'running' else 0, ExitCode=exit_code, Error=error,
                 StartedAt=started, FinishedAt=finished)
    if health:
        state['Health'] = dict(Status=health)
    return dict(Id='c0ffee', Name='/' + name, State=state, RestartCount=restarts, Created=started,
                Config=dict(Image='cullis/broker:1'))


class FakeContainer(object):
    def __init__(self, service, attrs, project_dir='/srv/stack/compose', project='compose'):
        self.attrs = attrs
        self.id = attrs['Id']
        self.name = attrs['Name'].lstrip('/')
        self.labels = {LABEL_SERVICE: service, LABEL_WORKDIR: project_dir, LABEL_PROJECT: project}
        self.calls = []

    @property
    def status(self):
        return self.attrs['State']['Status']

    def reload(self):
        self.calls.append('reload')

    def start(self):
        self.calls.append('start')
        self.attrs['State'].update(Status='running', Running=True, ExitCode=0, Pid=7)

    def stop(self, timeout=None):
        self.calls.append(('stop', timeout))
        self.attrs['State'].update(Status='exited', Running=False, ExitCode=0, Pid=0)

    def kill(self, signal=None):
        self.calls.append(('kill', signal))

    def logs(self, stdout=True, stderr=True, tail='all'):
        self.calls.append(('logs', tail))
        return b'line 1\nline 2\n'


class FakeContainers(object):
    def __init__(self, containers):
        self.items = containers
        self.filters = []

    def list(self, all=False, filters=None):  # pylint: disable=redefined-builtin
        self.filters.append(filters)
        assert all, 'stopped containers must be listed too'
        wanted = dict(f.split('=', 1) for f in filters['label'])
        return [c for c in self.items if has_labels(c, wanted)]


def has_labels(container, wanted):
    return all(container.labels.get(k) == v for k, v in wanted.items())


class FakeClient(object):
    def __init__(self, containers, up=True, events=(), events_fail=False):
        self.containers = FakeContainers(containers)
        self.up = up
        self._events, self.events_fail, self.event_queries = list(events), events_fail, []

    def events(self, since=None, until=None, filters=None, decode=False):
        """The engine's event log: `until` makes it a finite stream, as the runtime asks."""
        self.event_queries.append(dict(since=since, until=until, filters=filters, decode=decode))
        if self.events_fail:
            raise DockerException('events: connection reset')
        assert until is not None, 'without until the engine streams forever'
        return iter([e for e in self._events if since <= e['time'] <= until
                     and e['id'] == filters['container'] and e['status'] == filters['event']])

    def ping(self):
        if not self.up:
            raise OSError('connection refused')
        return True


def runtime(containers, **kwargs):
    kwargs.setdefault('project_dir', '/srv/stack/compose')
    return ComposeRuntime('/srv/stack', timeout=2, client=FakeClient(containers), **kwargs)


def test_docker_times_and_signals():
    assert parse_docker_time('0001-01-01T00:00:00Z') == 0
    assert parse_docker_time('1970-01-01T00:01:40.123456789Z') == 100
    assert signal_of_exit(137) == 'SIGKILL'
    assert signal_of_exit(143) == 'SIGTERM'
    assert signal_of_exit(3) is None and signal_of_exit(None) is None


def test_running_container_status():
    st = status_from_inspect('broker', inspect(health='healthy'), now=parse_docker_time('2026-11-30T03:01:00Z'))
    assert st['state'] == 'RUNNING' and st['running'] is True
    assert st['pid'] == 4242 and st['uptime'] == 60
    assert st['exit_code'] is None and st['signal'] is None
    assert st['health'] == 'healthy' and st['container'] == 'stack-broker-1'


def test_addresses_are_the_container_ips_on_its_networks():
    on_bridge = inspect()
    on_bridge['NetworkSettings'] = dict(Networks=dict(cullis_default=dict(IPAddress='172.18.0.3'),
                                                      backend=dict(IPAddress='10.9.0.2')))
    assert status_from_inspect('postgres', on_bridge)['addresses'] == ['172.18.0.3', '10.9.0.2']
    # network_mode: host has a network entry without an address of its own; no container, none
    on_host = inspect()
    on_host['NetworkSettings'] = dict(Networks=dict(host=dict(IPAddress='')))
    assert status_from_inspect('postgres', on_host)['addresses'] == []
    assert status_from_inspect('postgres', inspect())['addresses'] == []
    assert status_from_inspect('postgres', None)['addresses'] == []


def test_oom_killed_container_is_exited_137_sigkill():
    st = status_from_inspect('broker', inspect('exited', 137, oom=True, restarts=2,
                                               finished='2026-11-30T03:05:00Z'))
    assert st['state'] == 'EXITED' and not st['running'] and st['pid'] is None
    assert (st['exit_code'], st['signal'], st['oom_killed'], st['restart_count']) == (137, 'SIGKILL', True, 2)
    assert st['stop'] == parse_docker_time('2026-11-30T03:05:00Z')


def test_clean_exit_is_stopped_restarting_is_backoff_absent_is_absent():
    assert status_from_inspect('x', inspect('exited', 0))['state'] == 'STOPPED'
    assert status_from_inspect('x', inspect('exited', 3))['state'] == 'EXITED'
    assert status_from_inspect('x', inspect('restarting', 1))['state'] == 'BACKOFF'
    assert status_from_inspect('x', inspect('created'))['state'] == 'STOPPED'
    absent = status_from_inspect('x', None)
    assert absent['state'] == 'ABSENT' and absent['oom_killed'] is False


def test_factory_builds_compose_runtime_with_defaults(tmp_path):
    rt = get_runtime('compose', str(tmp_path), timeout=5, services={'broker': 'cullis-broker'},
                     docker_host='tcp://127.0.0.1:2375', project_dir=None, project_name=None)
    assert isinstance(rt, ComposeRuntime)
    assert rt.project_dir == str(tmp_path / 'compose')
    assert rt.compose_service('broker') == 'cullis-broker' and rt.compose_service('redis') == 'redis'
    assert rt.engine_address() == 'tcp://127.0.0.1:2375'


def test_services_found_by_project_dir_and_service_map():
    ours = FakeContainer('cullis-broker', inspect())
    other_project = FakeContainer('broker', inspect(name='other-broker-1'), project_dir='/elsewhere')
    rt = runtime([ours, other_project], services={'broker': 'cullis-broker'})
    assert rt.services() == ['broker']
    assert rt.container('broker') is ours
    assert rt.client.containers.filters[-1] == {'label': ['%s=/srv/stack/compose' % LABEL_WORKDIR,
                                                          '%s=cullis-broker' % LABEL_SERVICE]}


def test_project_name_selects_by_project_label():
    c = FakeContainer('redis', inspect(name='prod-redis-1'), project_dir='/opt/cullis/deploy/compose', project='prod')
    rt = runtime([c], project_name='prod')
    assert rt.status('redis')['running'] is True
    assert rt.client.containers.filters[-1]['label'][0] == '%s=prod' % LABEL_PROJECT


def test_stop_start_reload_go_through_the_container():
    c = FakeContainer('nginx', inspect(name='stack-nginx-1'))
    rt = runtime([c], stop_grace=7)
    assert rt.reload('nginx') is True
    assert ('kill', 'SIGHUP') in c.calls
    assert rt.stop('nginx') is True and ('stop', 7) in c.calls
    assert rt.stop('nginx') is False  # already down: nothing to do
    assert rt.start('nginx') is True and 'start' in c.calls
    assert rt.start('nginx') is False
    assert rt.logs('nginx', 5) == 'line 1\nline 2' and ('logs', 5) in c.calls


def test_absent_service_and_engine_down_are_reported_not_raised():
    rt = runtime([])
    assert rt.status('vault')['state'] == 'ABSENT'
    assert rt.logs('vault') == ''
    assert rt.stop('vault') is False
    down = ComposeRuntime('/srv/stack', client=FakeClient([], up=False), docker_host='unix:///x.sock')
    assert down.daemon_running() is False and down.services() == []
    assert 'unix:///x.sock' in down.status('broker')['description']
    with pytest.raises(RuntimeErrorCullis, match='does not answer'):
        down.ensure_daemon()


@pytest.mark.parametrize('attrs, expected', [
    (inspect('exited', 137, oom=True), ('oom', 'container', 137)),
    (inspect('exited', 137), ('killed', None, 137)),
    (inspect('exited', 3), ('startup_failure', None, 3)),
    (inspect('exited', 1), ('crash', None, 1)),
    (inspect('running', 0), ('running', None, None)),
])
def test_service_info_exit_class_from_the_container(attrs, expected):
    status = status_from_inspect('broker', attrs)
    info = describe('broker', status, ['starting', 'boom'], [], Redactor([]), 10)
    assert (info['exit_class'], info['oom'], info['shell_exit_code']) == expected
    assert info['restarts'] == 0 and info['cgroup_oom_kills'] is None


def test_oom_events_of_the_current_container_only():
    now = int(time.time())
    events = [dict(id='c0ffee', status='oom', time=now - 30), dict(id='c0ffee', status='oom', time=now - 5),
              dict(id='c0ffee', status='oom', time=now - 3600),  # before the window
              dict(id='deadbeef', status='oom', time=now - 5),  # another (an older, re-created) container
              dict(id='c0ffee', status='die', time=now - 5)]
    client = FakeClient([FakeContainer('broker', inspect('running', restarts=4))], events=events)
    rt = ComposeRuntime('/srv/stack', timeout=2, client=client, project_dir='/srv/stack/compose')
    assert rt.oom_events('broker', since=now - 600) == [now - 30, now - 5]
    assert client.event_queries[-1]['decode'] is True
    assert rt.oom_events('vault', since=now - 600) == []  # no container: nothing asked
    failing = ComposeRuntime('/srv/stack', timeout=2, project_dir='/srv/stack/compose',
                             client=FakeClient([FakeContainer('broker', inspect())], events_fail=True))
    assert failing.oom_events('broker', since=now - 600) == []  # extra evidence only: never an error


def test_running_again_after_oom_kills_is_reported_not_reclassified():
    """A restart policy started it again: it runs, so its exit class is `running`, and `oom` says a
    recent OOM kill happened - from the engine's events (engines that clear OOMKilled on the restart)
    or from OOMKilled with the last exit's time (engines that keep it); an old one is not evidence."""
    now = int(time.time())

    def info(**state):
        status = status_from_inspect('broker', inspect('running', restarts=3, **state))
        return status, describe('broker', status, ['starting'], [], Redactor([]), 10)

    status = info()[0]
    status['oom_events'] = [now - 4]
    got = describe('broker', status, ['starting'], [], Redactor([]), 10)
    assert (got['exit_class'], got['oom'], got['restarts']) == ('running', 'container_restarted', 3)
    assert info()[1]['oom'] is None  # no evidence at all
    recent = time.strftime('%Y-%m-%dT%H:%M:%S.5Z', time.gmtime(now - 20))
    assert info(oom=True, finished=recent)[1]['oom'] == 'container_restarted'
    assert info(oom=True, finished='2026-01-01T00:00:00Z')[1]['oom'] is None  # an OOM of long ago
    stopped = status_from_inspect('broker', inspect('exited', 137, oom=True, finished='2026-01-01T00:00:00Z'))
    assert describe('broker', stopped, [], [], Redactor([]), 10)['oom'] == 'container'  # its last exit, however old
