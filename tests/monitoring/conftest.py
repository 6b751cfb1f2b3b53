"""Fixtures of the remediation-playbook tests: an escalation receiver on loopback, a temp dir of
our own, and a stand-in repository whose incident playbook counts its runs."""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from testkit.ansible import REPO


@pytest.fixture
def receiver():
    """A real HTTP receiver of escalations: (its URL, the JSON bodies it got)."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass
    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/escalate", got
    server.shutdown()


@pytest.fixture
def tmp_dir():
    """A dir of our own (pytest prunes numbered tmp dirs of sessions still running in parallel)."""
    d = Path(tempfile.mkdtemp(prefix="cullis-remediate-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_repo():
    """Factory: make_repo(root, incident, recover_task) -> (repo, runs.log)."""
    return _make_repo


def _make_repo(root: Path, incident: str, recover_task: str) -> tuple[Path, Path]:
    """A repository with playbooks/incidents/<incident>.yml that appends a line to runs.log per run
    and then runs `recover_task` (one task, YAML flow mapping). Returns (repo, runs.log)."""
    repo = root / "repo"
    (repo / "playbooks/incidents").mkdir(parents=True)
    (repo / "ansible.cfg").write_text((REPO / "ansible.cfg").read_text().replace(
        "./collections", str(REPO / "collections")))
    runs = root / "runs.log"
    (repo / f"playbooks/incidents/{incident}.yml").write_text(f"""---
- name: A stand-in recovery
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  tasks:
    - name: Count the run
      ansible.builtin.lineinfile: {{path: "{runs}", line: "run {{{{ 1000000 | random }}}}", create: true, mode: "0600"}}
    - {recover_task}
""")
    return repo, runs
