# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cullis.broker.plugins.modules.tls_check import (
    build_targets, failure_message, summarize)

BASE = dict(ca_path=None, warn_days=30, critical_days=14, endpoints=[], paths=[])


def _ep(**kw):
    ep = dict(host=None, port=443, url=None, server_name=None, name=None, ca_path=None,
              warn_days=None, critical_days=None)
    ep.update(kw)
    return ep


def test_url_host_port_and_overrides():
    params = dict(BASE, endpoints=[_ep(url='https://broker.example.com:8443/health'),
                                   _ep(host='10.0.0.1', warn_days=60, ca_path='/ca.pem'),
                                   _ep(host='::1', port=8200, server_name='vault.local')])
    t = build_targets(params)
    assert (t[0]['host'], t[0]['port'], t[0]['name'], t[0]['hostname']) == (
        'broker.example.com', 8443, 'broker.example.com:8443', 'broker.example.com')
    assert (t[1]['warn_days'], t[1]['critical_days'], t[1]['ca_path']) == (60, 14, '/ca.pem')
    assert t[2]['name'] == '[::1]:8200' and t[2]['hostname'] == 'vault.local'


def test_paths_have_no_hostname_unless_given():
    params = dict(BASE, paths=[dict(path='/a.pem', server_name=None, name=None, ca_path=None,
                                    warn_days=None, critical_days=None)])
    t = build_targets(params)[0]
    assert t['kind'] == 'path' and t['hostname'] is None and t['name'] == '/a.pem'


def test_critical_above_warn_is_rejected():
    with pytest.raises(ValueError, match='critical_days'):
        build_targets(dict(BASE, endpoints=[_ep(host='h', critical_days=40)]))


def _r(name, status, not_after=None, days=None):
    return dict(name=name, status=status, problems=['p-' + name], not_after=not_after, days_left=days)


def test_summary_and_failure_levels():
    results = [_r('a', 'ok', '2027-01-01T00:00:00Z', 300), _r('b', 'warn', '2026-07-01T00:00:00Z', 20),
               _r('c', 'unknown')]
    s = summarize(results)
    assert (s['total'], s['ok'], s['warn'], s['critical'], s['unknown']) == (3, 1, 1, 0, 1)
    assert s['earliest_expiry'] == dict(name='b', not_after='2026-07-01T00:00:00Z', days_left=20)
    assert s['worst_status'] == 'unknown'
    assert failure_message(results, 'never') is None
    assert 'c: unknown' in failure_message(results, 'critical')
    assert 'b: warn' not in failure_message(results, 'critical')
    assert '2 of 3' in failure_message(results, 'warn')
    assert failure_message(results[:1], 'warn') is None
    assert summarize([])['earliest_expiry'] is None
