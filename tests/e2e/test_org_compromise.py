"""Org compromise on the deployed stack (runbook section 6 "Agent compromise - revoke everything for
one org"): an org of 20 agents, onboarded through nginx with the org_onboard module, holding a live
token, is contained by `playbooks/incidents/org_compromise.yml` exactly as an operator runs it
(inventory of the stack, secrets from the stack's .env, -vvv). A second run changes nothing.

The stack stays healthy: only the test's own org ends up suspended.
"""
from __future__ import annotations

import pytest

from testkit import scenarios

pytestmark = pytest.mark.slow

PLAYBOOK = scenarios.ORG_COMPROMISE
N_AGENTS = scenarios.N_AGENTS


def test_org_compromise_on_the_stack(stack, tmp_path):
    """Runbook section 6 end to end on the deployed stack (nginx TLS, supervisord, real brokers' rate limits)."""
    contain_an_org(stack, tmp_path)


def contain_an_org(stack, tmp_path, extra_vars: dict | None = None) -> tuple:
    """The scenario on `stack` (also the quirks stack, test_quirks.py); returns both runs' results."""
    return scenarios.org_compromise(stack, tmp_path, extra_vars)
