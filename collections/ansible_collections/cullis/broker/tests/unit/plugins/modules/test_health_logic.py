# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.cullis.broker.plugins.modules.broker_health import assess, classify_checks
from ansible_collections.cullis.broker.plugins.modules.redis_ping import classify_error, password_from_env

TLS_OK = {'scheme': 'https', 'verified': True, 'error': None}


def _readyz(status, state, checks):
    return {'status': status, 'state': state, 'checks': checks}


def test_all_ok_is_healthy():
    comps = classify_checks({'database': 'ok', 'redis': 'ok', 'kms': 'ok'})
    healthy, degraded, problems = assess({'status': 200}, _readyz(200, 'ready', {}), comps, TLS_OK)
    assert healthy and degraded == [] and problems == []


def test_redis_not_configured_is_degraded_even_when_ready():
    comps = classify_checks({'database': 'ok', 'redis': 'not_configured', 'kms': 'ok'})
    assert comps['redis']['state'] == 'not_configured'
    healthy, degraded, problems = assess({'status': 200}, _readyz(200, 'ready', {}), comps, TLS_OK)
    assert not healthy
    assert degraded == ['redis not_configured']


def test_first_failure_stops_later_checks():
    comps = classify_checks({'database': 'ok', 'redis': 'error: Connection refused'})
    assert comps['redis'] == {'state': 'error', 'detail': 'Connection refused'}
    assert comps['kms']['state'] == 'unchecked'
    healthy, dummy, problems = assess({'status': 200}, _readyz(503, 'not_ready', {}), comps, TLS_OK)
    assert not healthy
    assert any('redis check failed' in p for p in problems)


def test_unreachable_tls_and_admin_problems():
    comps = classify_checks({})
    healthy, dummy, problems = assess({'status': None, 'error': 'refused'}, _readyz(None, None, {}), comps,
                                      {'scheme': 'https', 'verified': False, 'error': 'bad cert'},
                                      {'state': 'rejected', 'status': 403})
    assert not healthy
    text = ' '.join(problems)
    assert 'unreachable' in text and 'TLS' in text and 'admin secret rejected' in text


def test_redis_password_sources():
    assert password_from_env({'REDIS_URL': 'redis://:pw%40x@127.0.0.1:6390/0'}) == ('pw@x', 6390, 'REDIS_URL')
    assert password_from_env({'REDIS_PASSWORD': 'abc'}) == ('abc', None, 'REDIS_PASSWORD')
    assert password_from_env({}) == (None, None, 'none')


def test_redis_error_classes():
    assert classify_error('-WRONGPASS invalid username-password pair or user is disabled.') == 'wrong_password'
    assert classify_error('-ERR AUTH <password> called without any password configured for the default user.') \
        == 'wrong_password'
    assert classify_error('-NOAUTH Authentication required.') == 'no_password_configured'
    assert classify_error('-LOADING Redis is loading') == 'error'
