"""The runbook's incidents on the compose runtime: the SAME scenarios as tests/e2e (process runtime),
from testkit/scenarios.py, on the session's shared compose stack (conftest.py `compose_stack`).

The fault is injected on the compose runtime: a container stopped on the Docker engine (Postgres,
Redis), Vault sealed through its API, an expired certificate reloaded into the nginx container
(`stack_service` with `runtime: compose`). The playbooks are the operator's, unchanged; each
scenario ends with the playbook's changed=0 run, and leaves the stack healthy for the next test.
"""
from __future__ import annotations

import pytest

from testkit import scenarios

pytestmark = pytest.mark.slow


def test_postgres_stopped_container_restarted(compose_stack):
    """Runbook section 2 (Recover 1): healthy -> changed=0; the postgres container stopped ->
    postgres_down.yml starts it, the broker reconnects."""
    scenarios.postgres_down_restart(compose_stack)


def test_vault_sealed_recovered(compose_stack):
    """Runbook section 3 (sealed): the Vault container's Vault sealed -> --check changes nothing ->
    unsealed, broker container restarted -> changed=0."""
    scenarios.vault_sealed(compose_stack, {"vault_keys_file": str(compose_stack.keys_file)})


def test_redis_stopped_container_triage_remediates(compose_stack):
    """Runbook section 4 (Recover 1): the redis container stopped; triage names redis_down,
    remediate=true starts it; triage after: no incident."""
    scenarios.redis_stopped(compose_stack)


def test_tls_expired_local_ca(compose_stack):
    """Runbook section 5: the nginx container serves an expired certificate; tls_expired.yml
    re-issues it from the local CA and reloads nginx; again changed=0."""
    scenarios.tls_expired_local_ca(compose_stack)


def test_backup_tampered_set_refused_then_restore(compose_stack):
    """Backups + section 2 Recover 3: backup.yml from the containers; restore.yml refuses without
    confirmation and refuses a tampered set; then restores (the broker container stopped/started)."""
    scenarios.backup_tamper_restore(compose_stack, tamper=True)


def test_org_compromise(compose_stack, tmp_path):
    """Runbook section 6: an org contained by org_compromise.yml through the nginx container;
    a second run changes nothing."""
    scenarios.org_compromise(compose_stack, tmp_path)
