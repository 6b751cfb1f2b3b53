"""How the operations playbooks log in to a compose project's PostgreSQL (issue 12, adoption).

Upstream's postgres container publishes no port and keeps its unix socket inside the container,
and its DATABASE_URL names the service (`postgres:5432`), which the host cannot resolve. The
postgres role's admin_login.yml finds the container's own address on its compose network
(cullis.broker.service_info `addresses`) and logs in over TCP as the DATABASE_URL's user. Here the
project is written by the test in that shape (the kit's postgres image, the compose default
network, no `ports:`, no shared volume) and a playbook logs in with that login, as backup.yml,
restore.yml and the incidents do, and takes and verifies a real dump with cullis.broker.pg_backup.
The password never shows, even at -vvv.
"""
from __future__ import annotations

import secrets
import textwrap

import pytest
import yaml

from testkit.ansible import run_playbook
from testkit.docker_engine import LABEL
from testkit.process import wait_for

pytestmark = pytest.mark.slow

PASSWORD = "pg-" + secrets.token_hex(12)

PLAYBOOK = textwrap.dedent("""\
    - hosts: cullis_postgres[0]
      gather_facts: false
      tasks:
        - ansible.builtin.include_role:
            name: cullis.broker.postgres
            tasks_from: admin_login
        - name: Log in as the superuser login says
          community.postgresql.postgresql_query:
            login_host: "{{ cullis_postgres_admin.login_host }}"
            login_port: "{{ cullis_postgres_admin.login_port }}"
            login_user: "{{ cullis_postgres_admin.login_user }}"
            login_password: "{{ cullis_postgres_admin.login_password }}"
            login_db: postgres
            query: SELECT current_user AS who, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS super
          register: who
        - name: A dump and its full verification (a restore into a scratch database) through that login
          cullis.broker.pg_backup:
            state: "{{ item }}"
            database: agent_trust
            dest: "{{ dump_dir }}"
            login_host: "{{ cullis_postgres_admin.login_host }}"
            login_port: "{{ cullis_postgres_admin.login_port }}"
            login_user: "{{ cullis_postgres_admin.login_user }}"
            login_password: "{{ cullis_postgres_admin.login_password }}"
            pg_bin_dir: /usr/lib/postgresql/15/bin
          loop: [present, verified]
          register: dump
        - name: What the test checks
          ansible.builtin.debug:
            msg: "LOGIN {{ cullis_postgres_admin.login_host }}:{{ cullis_postgres_admin.login_port }} {{ who.query_result[0] | to_json }} VERIFIED={{ dump.results[1].verification.status | default('none') }}:{{ dump.results[1].verification.mode | default('none') }}"
    """)


@pytest.fixture(scope="module")
def upstream_postgres(tmp_path_factory, compose_images, compose_cli, docker_engine):
    root = tmp_path_factory.mktemp("compose-pg-login")
    stack_dir, project_dir = root / "stack", root / "upstream"
    stack_dir.mkdir()
    project_dir.mkdir()
    labels = {LABEL: "e2e_compose_pg_login"}
    (project_dir / "docker-compose.yml").write_text(yaml.safe_dump({
        "services": {"postgres": {
            "image": compose_images["postgres"].tag, "labels": labels, "restart": "always",
            "environment": {"POSTGRES_USER": "cullis", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "agent_trust"},
            "volumes": ["postgres_data:/var/lib/postgresql/data"],
        }},
        "volumes": {"postgres_data": {"labels": labels}},
        "networks": {"default": {"labels": labels}},
    }))
    # upstream's DATABASE_URL: the service name, which only the compose network resolves
    (stack_dir / ".env").write_text(f"DATABASE_URL=postgresql+asyncpg://cullis:{PASSWORD}@postgres:5432/agent_trust\n")
    (stack_dir / ".env").chmod(0o600)
    inv = root / "inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}},
        "children": {"cullis_postgres": {"hosts": {"localhost": None}}, "cullis_broker": {"hosts": {"localhost": None}}},
        "vars": {"cullis_runtime": "compose", "cullis_stack_dir": str(stack_dir),
                 "cullis_env_file": str(stack_dir / ".env"), "cullis_compose_project_dir": str(project_dir),
                 "cullis_compose_services": {"postgres": "postgres"}, "cullis_docker_host": docker_engine.host},
    }}))
    compose_cli(project_dir, "up", "-d")
    try:
        def accepting():
            c = docker_engine.client.containers.list(filters={"label": "com.docker.compose.project.working_dir="
                                                              + str(project_dir)})
            return c and c[0].exec_run(["pg_isready", "-h", "127.0.0.1", "-U", "cullis"]).exit_code == 0
        wait_for(accepting, 60, "the upstream-shaped postgres container to accept connections")
        yield {"inventory": inv, "root": root}
    finally:
        compose_cli(project_dir, "down", "-v", "--timeout", "5", check=False)


def test_a_postgres_with_no_published_port_is_reached_at_its_container_address(upstream_postgres, compose_env):
    playbook = upstream_postgres["root"] / "login.yml"
    playbook.write_text(PLAYBOOK)
    dumps = upstream_postgres["root"] / "dumps"
    res = run_playbook(playbook, inventory=upstream_postgres["inventory"], env=compose_env, verbosity=3,
                       callback="default", extra_vars={"dump_dir": str(dumps)})
    assert res.rc == 0, res.explain()
    line = next(ln for ln in res.output.splitlines() if "LOGIN " in ln)
    host_port = line.split("LOGIN ", 1)[1].split()[0]
    host, port = host_port.rsplit(":", 1)
    # the container's own address on the compose network (not the unresolvable service name)
    assert host not in ("postgres", "127.0.0.1", "localhost") and host.count(".") == 3, line
    assert port == "5432", line
    assert '"who": "cullis"' in line and '"super": true' in line, line
    assert "VERIFIED=ok:restore" in line, line  # dumped, then restored into a scratch database and checked
    assert any(dumps.iterdir())
    assert PASSWORD not in res.output and PASSWORD not in res.stderr
