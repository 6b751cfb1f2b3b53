"""Static checks of the incident role's contract (issue 11): one task file per incident, thin
wrappers over the inventory groups, no nested ansible-playbook, no controller-side stack lookups.
Pure file reads (milliseconds); the behaviour itself is proven on the deployed stack by
tests/e2e/test_incidents_core.py, test_vault_incidents.py, test_tls_incidents.py,
test_org_compromise.py and the postgres_down tests of test_backup_restore.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "collections" / "ansible_collections" / "cullis" / "broker" / "roles" / "incident"
WRAPPERS = sorted((REPO / "playbooks" / "incidents").glob("*.yml"))
INCIDENTS = ("broker_down", "postgres_down", "vault_sealed", "vault_token_expired", "redis_down",
             "tls_expired", "org_compromise", "admin_lockout")


def code_lines(path: Path) -> str:
    """The file without its comment lines (headers may name what is no longer done)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_every_incident_has_a_task_file_and_a_thin_wrapper():
    assert sorted(p.stem for p in WRAPPERS) == sorted(INCIDENTS)
    for wrapper in WRAPPERS:
        assert (ROLE / "tasks" / f"{wrapper.stem}.yml").is_file(), wrapper.stem
        assert wrapper.read_text().startswith("---\n# Incident:"), f"{wrapper.name} lost its header comment"
        plays = yaml.safe_load(wrapper.read_text())
        assert len(plays) == 1, wrapper.name
        play = plays[0]
        assert play["hosts"] == "cullis_stack", wrapper.name
        froms = [t["ansible.builtin.include_role"]["tasks_from"] for t in play["tasks"]]
        assert all(t["ansible.builtin.include_role"]["name"] == "cullis.broker.incident" for t in play["tasks"])
        assert froms[:2] == ["read_env", wrapper.stem] and set(froms[2:]) <= {"timeline"}, (wrapper.name, froms)


COMMANDS = {"ansible.builtin.command", "ansible.builtin.shell", "command", "shell", "ansible.builtin.raw", "raw"}


def all_tasks(tasks):
    for task in tasks or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from all_tasks(task.get(key))


def test_no_localhost_play_and_no_nested_ansible_playbook():
    for path in [*WRAPPERS, REPO / "playbooks" / "triage.yml"]:
        assert "hosts: localhost" not in path.read_text(), path.name
    task_lists = [play.get("tasks") for play in yaml.safe_load((REPO / "playbooks" / "triage.yml").read_text())]
    task_lists += [yaml.safe_load(p.read_text()) for p in (ROLE / "tasks").glob("*.yml")]
    commands = [t for tasks in task_lists for t in all_tasks(tasks) if COMMANDS & set(t)]
    assert commands, "the walk found no command task at all (pg_isready, df): the check would prove nothing"
    for task in commands:
        assert "ansible-playbook" not in yaml.safe_dump(task), task.get("name")


@pytest.mark.parametrize("name", INCIDENTS)
def test_task_file_never_ends_the_play_nor_reads_stack_files_on_the_controller(name):
    text = code_lines(ROLE / "tasks" / f"{name}.yml")
    assert "end_play" not in text, "a task file included by triage must not end triage's play"
    assert not re.search(r"lookup\(\s*'(ansible\.builtin\.)?file'\s*,\s*cullis_", text)
    assert "is exists" not in text  # a controller-side file test


@pytest.mark.parametrize("name", ("postgres_down_single", "postgres_down_patroni"))
def test_postgres_down_branches_never_end_the_play(name):
    """postgres_down.yml dispatches to one of these (one server / Patroni cluster): same rules."""
    test_task_file_never_ends_the_play_nor_reads_stack_files_on_the_controller(name)


def test_postgres_restart_result_is_read():
    tasks = yaml.safe_load((ROLE / "tasks" / "postgres_down_single.yml").read_text())
    recover = next(t for t in tasks if t.get("name") == "Recover PostgreSQL")["block"]
    restart = next(t for t in recover if t.get("name", "").startswith("Recover: restart postgres"))
    assert "failed_when" not in restart and restart["register"] == "pgd_restart"
    later = yaml.safe_dump(recover[recover.index(restart) + 1:])
    assert "pgd_restart is failed" in later and "pgd_restart_msg" in later
