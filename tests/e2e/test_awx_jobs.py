"""The AWX job templates (awx/) run the way AWX runs them: through ansible-runner, with the
template's extra vars, survey defaults (or answers) and credential injection, against the shared
deployed stack. Each job's result is checked, and no secret of the stack or of the credentials may
reach the runner artifacts (stdout, job events, command, status).

On a healthy stack the incident templates stop at confirm (changed=0), which keeps this file to
a few minutes. Two templates are validated statically only (tests/awx/test_awx_config.py), for
time: the DR drill (a run deploys a second stack, ~3 min; tests/e2e/test_backup_restore.py runs
the drill playbook end to end) and the deploy (a re-run through ansible-runner took 190 s here
on the shared 2 cores, changed=0; tests/e2e/test_deploy.py proves the re-run and --check).
"""
from __future__ import annotations

import secrets as pysecrets
import tempfile
from pathlib import Path

import pytest

from testkit import awx

INCIDENTS_WITHOUT_QUESTIONS = [
    "Cullis - incident - broker down",
    "Cullis - incident - postgres down",
    "Cullis - incident - vault sealed",
    "Cullis - incident - vault token expired",
    "Cullis - incident - redis down",
    "Cullis - incident - TLS expired (ACME or self-signed)",
    "Cullis - incident - admin lockout",
]


class Controller:
    """The controller side: the data of awx/, the credentials' secret inputs, a job dir."""

    def __init__(self, stack, workdir: Path):
        self.stack = stack
        self.data = awx.load()
        self.workdir = workdir
        key_file = stack.dir / "backup.key"
        if not key_file.exists():  # what backup.yml creates on its first run; the set stays readable
            key_file.write_text(pysecrets.token_hex(32) + "\n")
            key_file.chmod(0o600)
        self.inputs = {
            "Cullis Vault unseal keys": {"keys_json": stack.keys_file.read_text()},
            "Cullis broker admin secret": {"admin_secret": stack.env["ADMIN_SECRET"]},
            "Cullis backup key": {"backup_key": key_file.read_text().strip()},
        }

    def secrets(self) -> list[str]:
        return self.stack.secret_values() + [self.inputs["Cullis backup key"]["backup_key"]]

    def launch(self, template: str, **kwargs) -> awx.Job:
        # the stack's own deploy knobs (broker source / venv of the e2e session) are inventory
        # variables for the controller: every job gets them, like Stack.run() gives them
        kwargs["extra_data"] = {**self.stack.extra_vars, **(kwargs.get("extra_data") or {})}
        job = awx.run_job(self.data, template, inventory=self.stack.inventory, credential_inputs=self.inputs,
                          workdir=self.workdir, **kwargs)
        assert job.events, f"{template}: no job events"
        assert awx.leaked(job, self.secrets()) == [], f"{template}: a secret reached the runner artifacts"
        return job


@pytest.fixture(scope="module")
def controller(stack):
    with tempfile.TemporaryDirectory(prefix="cullis-awx-") as tmp:
        yield Controller(stack, Path(tmp))


def tail(job: awx.Job, n: int = 40) -> str:
    return "\n".join(job.stdout.splitlines()[-n:])


def test_workflow_triage_remediate_smoke(controller):
    """controller_workflows: triage (report) -> triage remediate=true -> smoke, each on success."""
    (wf,) = controller.data["controller_workflows"]
    nodes = {n["identifier"]: n for n in wf["workflow_nodes"]}
    for ident in ("triage", "remediate", "smoke"):
        node = nodes[ident]
        job = controller.launch(node["unified_job_template"]["name"], extra_data=node.get("extra_data"))
        assert job.status == "successful", f"workflow node {ident}: {job.status}\n{tail(job)}"
        assert job.failures() == 0
    assert job.task_events("Every phase passed"), "the smoke node did not reach its verdict"
    assert any(e["event"] == "runner_on_ok" for e in job.task_events("Every phase passed"))


def test_smoke_uses_the_injected_admin_secret(controller):
    """The admin-secret credential wins over the stack's .env: a wrong one makes the smoke test fail."""
    real = controller.inputs["Cullis broker admin secret"]["admin_secret"]
    controller.inputs["Cullis broker admin secret"] = {"admin_secret": "wrong-" + pysecrets.token_hex(12)}
    try:
        job = controller.launch("Cullis - smoke test")
    finally:
        controller.inputs["Cullis broker admin secret"] = {"admin_secret": real}
    assert job.status == "failed", tail(job)
    assert "onboard" in job.stdout and "FAIL" in job.stdout, tail(job)


@pytest.mark.parametrize("template", INCIDENTS_WITHOUT_QUESTIONS)
def test_incident_template_stops_at_confirm_on_a_healthy_stack(controller, template):
    job = controller.launch(template)
    assert job.status == "successful", f"{job.status}\n{tail(job)}"
    assert job.changed() == 0, f"a healthy stack was changed:\n{tail(job)}"


def test_tls_byoca_template_with_its_survey(controller):
    """BYOCA asks for the operator's files (and the CA that vouches for them); with the certificate
    the stack serves, on a healthy stack, the files are checked and nothing is installed."""
    tls = controller.stack.dir / "tls"
    job = controller.launch("Cullis - incident - TLS expired (BYOCA)",
                            answers={"tls_cert": str(tls / "nginx.pem"), "tls_key": str(tls / "nginx-key.pem"),
                                     "tls_ca": str(tls / "ca.pem")})
    assert job.status == "successful", f"{job.status}\n{tail(job)}"
    assert job.changed() == 0
    assert "mode byoca" in job.stdout, "the survey answers did not select the BYOCA recovery"
    assert "NOT installed" in job.stdout, "a healthy certificate was replaced without tls_force"


def test_org_compromise_template_takes_org_id_from_its_survey(controller):
    org = "awx-no-such-org-" + pysecrets.token_hex(4)
    job = controller.launch("Cullis - incident - org compromise", answers={"org_id": org})
    assert job.status == "failed", "an unknown org cannot be contained"
    assert org in job.stdout, tail(job)
    assert job.changed() == 0


def test_backup_with_injected_keys_then_restore_asks_for_confirmation(controller):
    job = controller.launch("Cullis - backup")
    assert job.status == "successful", f"{job.status}\n{tail(job)}"
    injected = {p for inj in job.injections for p in inj.files}
    snapshot = [e for e in job.task_events("Vault raft snapshot (the broker signing key lives in Vault)")
                if e["event"] == "runner_on_ok"]
    assert snapshot, "no Vault snapshot in the backup job"
    args = snapshot[0]["event_data"]["res"]["invocation"]["module_args"]
    assert args["keys_file"] in injected, "the snapshot did not use the injected Vault keys"
    assert args["encryption_key_file"] in injected, "the snapshot did not use the injected backup key"
    for path in injected:  # AWX removes the job's credential files with the job; they are 0600 meanwhile
        assert Path(path).stat().st_mode & 0o777 == 0o600

    # restore: no launch without the confirmation answer (no default, so no schedule can restore)
    with pytest.raises(awx.LaunchRefused, match="confirm"):
        controller.launch("Cullis - restore")
    # job type check: the set is verified and the plan shown, nothing is changed (the broker is
    # not even restarted: same pid)
    broker_pid = controller.stack.services()["broker"]["pid"]
    job = controller.launch("Cullis - restore", job_type="check", answers={"confirm": "true"}, timeout=300)
    assert job.status == "successful", f"{job.status}\n{tail(job)}"
    assert "data-loss window" in job.stdout
    verified = [e["event"] for e in job.task_events("Every artifact of the set and every artifact manifest match the set manifest")]
    assert "runner_on_ok" in verified and "runner_on_failed" not in verified
    assert controller.stack.services()["broker"]["pid"] == broker_pid, "a check-mode restore restarted the broker"
    status, _ = controller.stack.get("/readyz")
    assert status == 200


def test_tls_monitor_template(controller):
    job = controller.launch("Cullis - TLS monitor")
    assert job.status == "successful", f"{job.status}\n{tail(job)}"
    assert job.changed() == 0
    assert job.task_events("Check every certificate (warns under warn_days)")
