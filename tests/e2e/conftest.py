"""The end-to-end stack: one complete Cullis stack per test session, deployed by the real playbook.

`stack` deploys PostgreSQL, Redis, OpenBao, the broker and nginx with `playbooks/deploy.yml` into
a temp directory on free ports (a temp inventory: a copy of inventories/local whose group_vars
override the ports and `cullis_stack_dir`), yields a `Stack`, and tears it down with
`playbooks/down.yml -e purge=true` (every process is stopped by the PID its supervisord holds;
the supervisord itself by its pid file if the playbook could not).

Tests that break the stack (stop a service, seal Vault, revoke an org, ...) must leave it
healthy again: the next test gets the same stack.

`quirks_stack` (session scope, used by test_quirks.py and test_acme_first_deploy.py) is a second
stack of the same broker source whose broker runs with `CULLIS_REAL_BROKER_QUIRKS`
(broker_src/README.md, "Quirks mode"): it behaves like a deployed real Cullis broker (per-org write
race, SIGTERM ignored, Vault cached, Redis fallback, no extensions, verbatim serials, re-approve
500, admin-lockout trap). It is deployed in ACME mode against Pebble, so that one deploy is also
the first ACME deploy (a stack deploy costs about 4 CPU-minutes on this machine). It reuses
the broker venv of `stack` when that one is deployed in the same session (same source and pip
packages), so it costs a deploy without the pip install.

Environment knobs (all optional; they apply to both stacks):
- CULLIS_BROKER_SRC: the broker source tree to deploy (default broker_src/ of the repository),
  e.g. a checkout of real Cullis.
- CULLIS_E2E_BROKER_PIP: extra pip requirement specifiers for that broker, separated by spaces
  or commas (-> cullis_broker_extra_pip_packages), e.g. "asyncpg==0.30.0 hvac==2.3.0".
- CULLIS_E2E_BROKER_VARS: more variables of the deployment, as a JSON object (or a path to a
  JSON/YAML file holding one), passed as extra vars to every playbook run, e.g.
  '{"cullis_broker_extra_environment": {"OTEL_ENABLED": "false"}, "cullis_broker_health_timeout": 240}'.
  Its `cullis_broker_extra_environment` is merged under the quirks stack's own switch.
- CULLIS_E2E_QUIRKS: the quirks of `quirks_stack` (default `all`; a comma list of names).
  Against a real broker source the switch is simply ignored by the broker.
- CULLIS_E2E_BROKER_VENV: reuse this broker venv across sessions (created if missing) instead of
  building one in the stack dir.
- CULLIS_E2E_KEEP=1: leave the stacks running after the session (their dirs are printed).
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from testkit.ansible import REPO
from testkit.process import free_port
from testkit.stacks import SECRET_ENV_KEYS, Stack, read_env  # noqa: F401  (the handle lives in the test kit)

PORT_VARS = ("cullis_postgres_port", "cullis_redis_port", "cullis_vault_port", "cullis_vault_cluster_port",
             "cullis_broker_port", "cullis_nginx_port", "cullis_nginx_http_port")


def distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def write_inventory(base: Path, stack_dir: Path, ports: dict) -> Path:
    inv = base / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(REPO / "inventories" / "local" / "hosts.yml", inv / "hosts.yml")
    local_vars = yaml.safe_load((REPO / "inventories" / "local" / "group_vars" / "all" / "stack.yml").read_text())
    local_vars.update(ports)
    local_vars["cullis_stack_dir"] = str(stack_dir)
    (inv / "group_vars" / "all" / "stack.yml").write_text(
        "---\n# Temp inventory of the e2e stack: inventories/local with free ports.\n"
        + yaml.safe_dump(local_vars, sort_keys=False))
    return inv


def _stop_by_pid(pid: int | None, grace: float = 60) -> None:
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)  # supervisord stops its programs (grace, then SIGKILL) and exits
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pytest_collection_modifyitems(config, items):
    """Run test_deploy.py first: it proves idempotence on the freshly deployed stack."""
    here = Path(__file__).parent
    e2e = [i for i, item in enumerate(items) if here in item.path.parents]
    for i in e2e:  # `-m stack` / `-m "not stack"` select every test on the deployed stack
        if "stack" in getattr(items[i], "fixturenames", ()):
            items[i].add_marker(pytest.mark.stack)
    if not e2e:
        return
    chunk = [items[i] for i in e2e]
    chunk.sort(key=lambda item: 0 if item.path.name == "test_deploy.py" else 1)  # stable
    for i, item in zip(e2e, chunk):
        items[i] = item


def harness_vars(environ=os.environ) -> dict:
    """Extra vars every e2e playbook run gets, from the CULLIS_* knobs of the module docstring."""
    extra: dict = {}
    more = environ.get("CULLIS_E2E_BROKER_VARS", "").strip()
    if more:
        text = Path(more).read_text() if not more.startswith("{") else more
        loaded = yaml.safe_load(text)  # JSON is YAML
        if not isinstance(loaded, dict):
            raise pytest.UsageError(f"CULLIS_E2E_BROKER_VARS must hold a mapping, got {type(loaded).__name__}")
        extra.update(loaded)
    if environ.get("CULLIS_BROKER_SRC"):
        extra["cullis_broker_src"] = environ["CULLIS_BROKER_SRC"]
    pip = environ.get("CULLIS_E2E_BROKER_PIP", "").replace(",", " ").split()
    if pip:
        extra["cullis_broker_extra_pip_packages"] = pip
    if environ.get("CULLIS_E2E_BROKER_VENV"):
        extra["cullis_broker_venv"] = environ["CULLIS_E2E_BROKER_VENV"]
    return extra


def quirks_vars(base: dict, environ=os.environ) -> dict:
    """`base` plus the quirks switch in the broker's environment (merged over any given one)."""
    extra = dict(base)
    env = dict(extra.get("cullis_broker_extra_environment") or {})
    env["CULLIS_REAL_BROKER_QUIRKS"] = environ.get("CULLIS_E2E_QUIRKS", "").strip() or "all"
    extra["cullis_broker_extra_environment"] = env
    return extra


# Stacks deployed in this session (so a later one can reuse a broker venv built for the same things).
_DEPLOYED: list[Stack] = []


def _venv_fingerprint(extra: dict) -> tuple:
    return (extra.get("cullis_broker_src"), tuple(extra.get("cullis_broker_extra_pip_packages") or ()),
            extra.get("cullis_broker_pip_constraints"))


@contextmanager
def deployed_stack(name: str, extra: dict, verbosity: int = 0, ports: dict | None = None):
    """Deploy a complete stack on free ports in a temp dir with `extra` vars; tear it down after.
    `ports` fixes some of the PORT_VARS (e.g. the nginx HTTP port an ACME server validates on)."""
    base = Path(tempfile.mkdtemp(prefix=f"cullis-e2e-{name}-"))
    base.chmod(0o755)  # the postgres OS user must traverse it
    stack_dir = base / "stack"
    fixed = dict(ports or {})
    free = [p for p in distinct_free_ports(len(PORT_VARS) + len(fixed)) if p not in fixed.values()]
    ports = {var: fixed[var] if var in fixed else free.pop(0) for var in PORT_VARS}
    inventory = write_inventory(base, stack_dir, ports)
    if "cullis_broker_venv" not in extra:
        for other in _DEPLOYED:  # content-equal venv already built this session: share it (read-only use)
            if _venv_fingerprint(other.extra_vars) == _venv_fingerprint(extra):
                extra = dict(extra, cullis_broker_venv=other.broker_venv)
                break
    st = Stack(dir=stack_dir, inventory=inventory, ports=ports, vars={}, extra_vars=extra)
    try:
        t0 = time.monotonic()
        st.deploy_result = st.run("playbooks/deploy.yml", verbosity=verbosity)
        st.deploy_seconds = time.monotonic() - t0
        if st.deploy_result.rc != 0:
            tail = "\n".join(st.deploy_result.output.splitlines()[-60:])
            pytest.fail(f"deploy of the e2e {name} stack failed (rc={st.deploy_result.rc}):\n{tail}", pytrace=False)
        _DEPLOYED.append(st)
        yield st
    finally:
        if st in _DEPLOYED:
            _DEPLOYED.remove(st)
        if os.environ.get("CULLIS_E2E_KEEP") == "1":
            print(f"\nCULLIS_E2E_KEEP=1: {name} stack left running in {stack_dir} (inventory {inventory})")
        else:
            pid = st.supervisord_pid()
            try:
                st.run("playbooks/down.yml", extra_vars={"purge": True}, timeout=300)
            finally:
                _stop_by_pid(pid)
                shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def stack():
    # verbosity 3: test_deploy asserts that not even -vvv of the secret-generating run leaks
    with deployed_stack("main", harness_vars(), verbosity=3) as st:
        yield st


@pytest.fixture(scope="session")
def quirks_stack():
    """A stack whose broker behaves like a deployed real Cullis broker (CULLIS_REAL_BROKER_QUIRKS),
    deployed in ACME mode against Debian's Pebble on loopback: the same deploy is the first ACME
    deploy of test_acme_first_deploy.py (`pebble` and `pebble_root` are attributes of the stack).
    Clients of its public URL verify with Pebble's root (`Stack.public_ca_path`), Vault's clients
    with the stack's own CA (`ca_path`)."""
    from testkit.pebble import PebbleServer

    http_port = free_port()  # the nginx HTTP port, where Pebble's VA validates HTTP-01
    with PebbleServer(http_port=http_port) as pebble:
        root = pebble.base / "pebble-issuer-root.pem"
        root.write_bytes(pebble.issuer_root_pem())
        extra = dict(quirks_vars(harness_vars()), cullis_tls_mode="acme",
                     cullis_tls_acme_directory=pebble.directory_url,
                     cullis_tls_acme_directory_ca=str(pebble.api_ca_path), cullis_tls_public_ca_path=str(root))
        with deployed_stack("quirks-acme", extra, ports={"cullis_nginx_http_port": http_port}) as st:
            st.pebble, st.pebble_root = pebble, root
            yield st
