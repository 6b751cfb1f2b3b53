# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of agent_login's outcome logic (expectations, 429 waits, identity lookup)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cullis.broker.plugins.module_utils._agent_client import LoginError, jws_sign
from ansible_collections.cullis.broker.plugins.module_utils import _org_identity as oid
from ansible_collections.cullis.broker.plugins.modules.agent_login import (
    LoginFailed, check_expectations, login, resolve_agent_dir, retry_after_seconds, token_claims)


def params(**kw):
    p = {'expect': 'success', 'expect_status': None, 'expect_detail': None}
    p.update(kw)
    return p


class ScriptedSession(object):
    """Answers login() with a scripted list of outcomes (None = success)."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    def login(self):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return {'access_token': 'x'}


def rate_limited(retry_after='7'):
    err = LoginError(429, "Rate limit exceeded for 'auth.token': max 10 req/60s")
    err.headers = {'retry-after': retry_after}
    return err


def test_success_meets_default_expectation():
    assert check_expectations(params(), 200, '') == []


def test_success_when_failure_expected_is_reported():
    problems = check_expectations(params(expect='failure'), 200, '')
    assert problems == ['expected the broker to reject the login, but it issued a token']


def test_failure_with_expected_status_and_detail():
    p = params(expect='failure', expect_status=401, expect_detail='Certificate has been revoked')
    assert check_expectations(p, 401, 'Certificate has been revoked') == []


def test_wrong_status_and_detail_are_both_reported():
    p = params(expect='failure', expect_status=403, expect_detail='No approved binding')
    problems = check_expectations(p, 401, 'Invalid client_assertion signature')
    assert len(problems) == 2
    assert 'expected HTTP 403, got HTTP 401' in problems[0]
    assert 'No approved binding' in problems[1]


def test_failed_login_when_success_expected():
    problems = check_expectations(params(), 403, 'Agent not active')
    assert problems == ['expected a successful login, got HTTP 403: Agent not active']


def test_any_only_reports():
    assert check_expectations(params(expect='any'), 500, 'boom') == []


def test_429_is_waited_out_with_retry_after():
    slept = []
    session = ScriptedSession([rate_limited('7'), rate_limited('7'), None])
    status, detail, waited = login(session, 60, sleep=slept.append)
    assert (status, detail) == (200, '')
    assert slept == [7, 7] and waited == 14 and session.calls == 3


def test_429_gives_up_after_max_wait():
    slept = []
    session = ScriptedSession([rate_limited('60')] * 5)
    status, detail, waited = login(session, 90, sleep=slept.append)
    assert status == 429 and 'Rate limit' in detail
    assert slept == [60, 30] and waited == 90


def test_no_wait_when_disabled():
    session = ScriptedSession([rate_limited()])
    status, _detail, waited = login(session, 0, sleep=lambda s: pytest.fail('slept'))
    assert status == 429 and waited == 0


def test_other_rejections_are_not_retried():
    session = ScriptedSession([LoginError(401, 'Certificate has been revoked')])
    assert login(session, 60, sleep=lambda s: pytest.fail('slept'))[:2] == (401, 'Certificate has been revoked')


def test_retry_after_defaults_to_a_minute():
    assert retry_after_seconds(LoginError(429, 'x')) == 60
    err = LoginError(429, 'x')
    err.headers = {'retry-after': 'soon'}
    assert retry_after_seconds(err) == 60


def test_token_claims_are_decoded_and_garbage_is_empty():
    key = oid.new_ec_key()
    token = jws_sign({'typ': 'JWT'}, {'agent_id': 'acme::a1', 'org': 'acme'}, key)
    assert token_claims(token) == {'agent_id': 'acme::a1', 'org': 'acme'}
    assert token_claims('not-a-token') == {}


def test_resolve_agent_dir(tmp_path):
    d = oid.OrgIdentityDir(str(tmp_path))
    d.ensure_dirs()
    d.save_state({'org_id': 'acme'})
    (tmp_path / 'agents' / 'a1').mkdir()
    assert resolve_agent_dir(str(tmp_path), 'a1') == str(tmp_path / 'agents' / 'a1')
    assert resolve_agent_dir(str(tmp_path), 'acme::a1') == str(tmp_path / 'agents' / 'a1')
    with pytest.raises(LoginFailed, match='not in'):
        resolve_agent_dir(str(tmp_path), 'other::a1')
    with pytest.raises(LoginFailed, match='onboard it with cullis.broker.org_onboard'):
        resolve_agent_dir(str(tmp_path), 'a2')
