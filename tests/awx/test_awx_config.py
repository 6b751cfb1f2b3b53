"""The AWX / AAP configuration as code (awx/), validated without an AWX server.

Every job template's playbook exists; every survey variable is one the playbook (or a role it
uses) reads; every variable the playbook requires is asked, injected or set; every credential a
template uses injects something the playbook reads, and only through files and environment for
the secrets; every item carries only options of its awx.awx module and the apply playbook passes
them all; workflows and schedules point at real templates and only set survey variables (AWX
drops the rest). The runs through ansible-runner are in tests/e2e/test_awx_jobs.py (they need the
deployed stack).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from testkit import awx
from testkit.ansible import REPO, ansible_env

DATA = awx.load()
TEMPLATES = DATA["controller_templates"]
TYPES = awx.by_name(DATA["controller_credential_types"])
CREDS = awx.by_name(DATA["controller_credentials"])
APPLY = REPO / "playbooks" / "awx_apply.yml"

# Every playbook an operator runs has a template (summary/down are make targets, awx_apply runs
# the controller itself).
NOT_TEMPLATED = {"playbooks/summary.yml", "playbooks/down.yml", "playbooks/awx_apply.yml"}

MODULE_OF_LIST = {
    "controller_credential_types": "credential_type",
    "controller_credentials": "credential",
    "controller_execution_environments": "execution_environment",
    "controller_projects": "project",
    "controller_inventories": "inventory",
    "controller_inventory_sources": "inventory_source",
    "controller_templates": "job_template",
    "controller_workflows": "workflow_job_template",
    "controller_schedules": "schedule",
}


def ids(items):
    return [i["name"] for i in items]


@lru_cache(maxsize=None)
def module_options(module: str) -> dict:
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-j", f"awx.awx.{module}"],
                         capture_output=True, text=True, env=ansible_env(), check=True)
    return next(iter(json.loads(out.stdout).values()))["doc"]["options"]


def test_every_operator_playbook_has_a_template():
    playbooks = {str(p.relative_to(REPO)) for p in (REPO / "playbooks").rglob("*.yml")}
    templated = {t["playbook"] for t in TEMPLATES}
    assert playbooks - templated - NOT_TEMPLATED == set()
    assert templated - playbooks == set(), "templates name playbooks that do not exist"


@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_template_playbook_exists_and_parses(template):
    path = REPO / template["playbook"]
    assert path.is_file(), template["playbook"]
    plays = yaml.safe_load(path.read_text())
    assert isinstance(plays, list) and plays, f"{path} is not a playbook"


@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_survey_variables_are_read_by_the_playbook(template):
    if not template.get("survey_enabled"):
        assert not template.get("survey_spec"), "a survey that is not enabled is never asked"
        return
    corpus = awx.playbook_corpus(template["playbook"])
    spec = template["survey_spec"]["spec"]
    assert spec, "survey_enabled with no question"
    for q in spec:
        declared = any(q["variable"] in options for options in role_specs().values())
        assert awx.reads_var(corpus, q["variable"]) or declared, \
            f"{q['variable']} is not read by {template['playbook']} nor declared by a role's argument spec"
        assert q["type"] in {"text", "textarea", "password", "integer", "float", "multiplechoice",
                             "multiselect"}, q
        assert q.get("question_name"), q
        if q["type"] == "multiplechoice":
            assert q.get("default", q["choices"][0]) in q["choices"], f"default of {q['variable']} not among its choices"
        assert q["type"] != "password", "secrets come from credential types, not surveys"
    names = [q["variable"] for q in spec]
    assert len(names) == len(set(names)), "a variable asked twice"


@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_required_variables_are_asked_or_injected(template):
    asked = {q["variable"] for q in (template.get("survey_spec") or {}).get("spec", [])
             if q.get("required") or q.get("default") not in (None, "")}
    given = set(template.get("extra_vars") or {})
    injected = set()
    for cred in template.get("credentials") or []:
        injected |= awx.injected_names(TYPES[CREDS[cred]["credential_type"]])[0]
    missing = awx.required_vars(template["playbook"]) - asked - given - injected - inventory_vars(template)
    assert not missing, f"{template['playbook']} requires {sorted(missing)}: ask, inject or set them in the inventory"


def test_required_vars_finds_the_known_requirements():
    # the detector itself: org_compromise insists on org_id (assert ... is defined); the roles'
    # argument specs mark what they need from the inventory (tls_monitor uses cullis.broker.tls_acme)
    assert "org_id" in awx.required_vars("playbooks/incidents/org_compromise.yml")
    # tls_monitor uses cullis.broker.tls_acme, and cullis.broker.incident (tls_file_check) since the
    # certificate files are checked by the incident role's helper: the incident role's main spec
    assert awx.required_vars("playbooks/tls_monitor.yml") == {
        "cullis_stack_dir", "cullis_public_host", "cullis_nginx_http_port", "cullis_broker_port",
        "cullis_broker_public_url", "cullis_env_file", "cullis_runtime", "cullis_tls_ca_path", "cullis_vault_addr"}
    assert "cullis_stack_dir" in inventory_vars(awx.by_name(TEMPLATES)["Cullis - deploy"])


def inventory_vars(template) -> set[str]:
    """Variables the template's inventory sets: the group_vars beside the project file its
    inventory source reads (AWX imports them with the hosts)."""
    names: set[str] = set()
    for source in DATA["controller_inventory_sources"]:
        if source["inventory"] == template["inventory"]:
            for f in ((REPO / source["source_path"]).parent / "group_vars").rglob("*.yml"):
                names |= set(yaml.safe_load(f.read_text()) or {})
    return names


@lru_cache(maxsize=None)
def role_specs() -> dict[str, dict]:
    """role -> {option: spec} over every entry point of its meta/argument_specs.yml."""
    specs = {}
    for f in sorted((awx.COLLECTION / "roles").glob("*/meta/argument_specs.yml")):
        options = {}
        for entry in (yaml.safe_load(f.read_text())["argument_specs"] or {}).values():
            options.update(entry.get("options") or {})
        specs[f.parent.parent.name] = options
    return specs


ROLES = sorted(p.name for p in (awx.COLLECTION / "roles").iterdir() if p.is_dir())
SURVEY_TYPES = {"int": {"integer"}, "float": {"float", "integer"}, "str": {"text", "textarea", "multiplechoice"},
                "path": {"text", "textarea"}, "bool": {"multiplechoice"}, "list": {"multiselect"},
                "raw": {"text", "textarea", "integer", "float", "multiplechoice", "multiselect"}}


@pytest.mark.parametrize("role", ROLES)
def test_role_argument_specs_document_every_default(role):
    """meta/argument_specs.yml: every variable of defaults/main.yml with its type, a description and
    the same default (or, for a default computed by Jinja into a non-string, the word "computed");
    required options have no default and every inventory of inventories/ sets them."""
    spec_file = awx.COLLECTION / "roles" / role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"role {role} has no meta/argument_specs.yml"
    options = role_specs()[role]
    defaults = yaml.safe_load((awx.COLLECTION / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    python_type = {bool: "bool", int: "int", float: "float", list: "list", dict: "dict"}
    for name, value in defaults.items():
        assert name in options, f"{role}: {name} of defaults/main.yml is not in argument_specs"
        spec = options[name]
        assert spec.get("type") and spec.get("description"), f"{role}: {name} needs a type and a description"
        assert not spec.get("required"), f"{role}: {name} has a default, it cannot be required"
        if isinstance(value, str) and "{" in value and spec["type"] not in ("str", "path"):
            assert "default" not in spec and "computed" in " ".join(spec["description"]), name
            continue
        want = " ".join(value.split()) if isinstance(value, str) and "{" in value else value
        assert spec.get("default") == want, f"{role}: default of {name} differs from defaults/main.yml"
        if not isinstance(value, str):
            assert spec["type"] == python_type[type(value)], f"{role}: {name} is a {type(value).__name__}"
    inventories = [f for f in (REPO / "inventories").glob("*/group_vars/all/*.yml")]
    for name, spec in options.items():
        if spec.get("required"):
            assert "default" not in spec and name not in defaults, name
            for inv in inventories:
                assert name in (yaml.safe_load(inv.read_text()) or {}), f"{role} needs {name}; {inv} does not set it"


def test_role_argument_specs_render_in_ansible_doc():
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-t", "role", "-j",
                          *[f"cullis.broker.{r}" for r in ROLES]], capture_output=True, text=True,
                         env=ansible_env(), check=True)
    docs = json.loads(out.stdout)
    for role in ROLES:
        assert docs[f"cullis.broker.{role}"]["entry_points"]["main"]["options"], role


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t.get("survey_enabled")],
                         ids=ids([t for t in TEMPLATES if t.get("survey_enabled")]))
def test_survey_answers_fit_the_roles_argument_specs(template):
    """A survey variable that a role of the playbook declares in its argument spec is asked with a
    matching type (and choices within the spec's choices): the role validates it when it starts."""
    corpus = awx.playbook_corpus(template["playbook"])
    specs = role_specs()
    used = {r for r in ROLES if re.search(rf"cullis\.broker\.{r}\b", corpus)}
    for q in template["survey_spec"]["spec"]:
        for role in used:
            spec = specs[role].get(q["variable"])
            if spec is None:
                continue
            assert q["type"] in SURVEY_TYPES[spec["type"]], \
                f"{q['variable']}: survey type {q['type']} for a {spec['type']} option of role {role}"
            if spec["type"] == "bool":
                assert set(q["choices"]) <= {"true", "false"}, q
            if spec.get("choices") and q["type"] == "multiplechoice":
                assert set(q["choices"]) <= {str(c) for c in spec["choices"]}, q


@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_credentials_feed_what_the_playbook_reads(template):
    corpus = awx.playbook_corpus(template["playbook"])
    for cred_name in template.get("credentials") or []:
        assert cred_name in CREDS, f"unknown credential {cred_name}"
        ctype = TYPES[CREDS[cred_name]["credential_type"]]
        extra, env = awx.injected_names(ctype)
        fed = {v for v in extra if awx.reads_var(corpus, v)} | {e for e in env if awx.reads_env(corpus, e)}
        assert fed, f"{cred_name}: none of {sorted(extra | env)} is read by {template['playbook']}"


@pytest.mark.parametrize("ctype", DATA["controller_credential_types"], ids=ids(DATA["controller_credential_types"]))
def test_credential_type_hands_secrets_over_safely(ctype, tmp_path):
    assert ctype["kind"] in ("cloud", "net"), "custom credential types are cloud or net"
    fields = {f["id"]: f for f in ctype["inputs"]["fields"]}
    assert set(ctype["inputs"].get("required", [])) <= set(fields)
    assert all(f.get("secret") for f in fields.values()), "every input of these types is a secret"
    # every input is used by an injector, every injector template only uses inputs / tower.filename
    inj = ctype["injectors"]
    templates = list((inj.get("file") or {}).values()) + list((inj.get("env") or {}).values()) + \
        list((inj.get("extra_vars") or {}).values())
    used = set(re.findall(r"{{\s*(\w+)", " ".join(templates)))
    assert used - {"tower"} <= set(fields), f"injectors use undefined inputs {used - set(fields)}"
    assert set(fields) <= used, f"inputs never injected: {set(fields) - used}"
    # rendered like the controller: the secret goes into a 0600 file or the environment, never
    # into an extra var except as a no_log override (cullis_smoke_admin_secret)
    inputs = {fid: f"s3cret-{fid}-value" for fid in fields}
    injection = awx.inject(ctype, inputs, tmp_path)
    for path, content in injection.files.items():
        assert Path(path).stat().st_mode & 0o777 == 0o600
        assert Path(path).read_text() == content
    for name, value in injection.env.items():  # the runner records the job's env in `command`
        assert not any(s in value for s in injection.secrets), f"secret in environment variable {name}"
    for name, value in injection.extra_vars.items():
        if any(s in value for s in injection.secrets):
            assert name == "cullis_smoke_admin_secret", f"secret in extra var {name}"
        else:
            assert value in injection.files, f"{name} should be the path of an injected file"


def test_smoke_admin_secret_override_is_no_log_in_the_playbook():
    """The one secret given as an extra var: smoke only sends it through no_log tasks / options."""
    text = (REPO / "playbooks" / "smoke.yml").read_text()
    assert "admin_secret: \"{{ cullis_smoke_admin_secret | default(omit) }}\"" in text
    for task_text in re.split(r"\n\s*- name: ", text):
        if "x-admin-secret: \"{{ cullis_smoke_admin_secret }}\"" in task_text:
            assert "no_log: true" in task_text


@pytest.mark.parametrize("list_name", sorted(MODULE_OF_LIST))
def test_items_use_only_module_options_and_apply_passes_them(list_name):
    module = MODULE_OF_LIST[list_name]
    options = module_options(module)
    plays = yaml.safe_load(APPLY.read_text())
    tasks = [t for t in plays[0]["tasks"] if f"awx.awx.{module}" in t]
    assert len(tasks) == 1, f"apply playbook has no single awx.awx.{module} task"
    task = tasks[0]
    assert task["loop"] == "{{ %s }}" % list_name
    passed = task[f"awx.awx.{module}"]
    assert set(passed) <= set(options), f"apply passes unknown options {set(passed) - set(options)}"
    items = DATA[list_name]
    assert items, f"{list_name} is empty"
    for item in items:
        unknown = set(item) - set(options)
        assert not unknown, f"{item['name']}: not options of awx.awx.{module}: {unknown}"
        dropped = set(item) - set(passed)
        assert not dropped, f"{item['name']}: the apply playbook does not pass {dropped}"
        for opt, spec in options.items():
            if spec.get("required"):
                assert opt in item, f"{item['name']}: required option {opt}"
            if "choices" in spec and opt in item and not isinstance(item[opt], (dict, list)):
                assert item[opt] in spec["choices"], f"{item['name']}: {opt}={item[opt]}"


def test_secrets_are_not_in_the_data():
    for cred in DATA["controller_credentials"]:
        for value in cred["inputs"].values():
            assert value.startswith("<"), "credential inputs come from cullis_awx_* variables"
    raw = "\n".join(p.read_text() for p in (REPO / "awx").glob("controller_credentials.yml"))
    assert re.findall(r"inputs:\n(?:\s+\w+: \"{{ cullis_awx_\w+ }}\"\n)+", raw)


def test_workflow_triage_remediate_smoke():
    templates = awx.by_name(TEMPLATES)
    (wf,) = DATA["controller_workflows"]
    nodes = {n["identifier"]: n for n in wf["workflow_nodes"]}
    order, node = [], "triage"
    while node:
        order.append(node)
        nxt = nodes[node].get("related", {}).get("success_nodes", [])
        node = nxt[0]["identifier"] if nxt else None
    assert order == ["triage", "remediate", "smoke"]
    assert nodes["triage"]["extra_data"] == {"remediate": "false"}
    assert nodes["remediate"]["extra_data"] == {"remediate": "true"}
    for n in nodes.values():
        template = templates[n["unified_job_template"]["name"]]
        asked = {q["variable"] for q in (template.get("survey_spec") or {}).get("spec", [])}
        assert set(n.get("extra_data", {})) <= asked, "AWX ignores extra_data a template does not ask"
    assert templates[nodes["smoke"]["unified_job_template"]["name"]]["playbook"] == "playbooks/smoke.yml"
    assert templates[nodes["triage"]["unified_job_template"]["name"]]["playbook"] == "playbooks/triage.yml"


def test_schedules():
    templates = awx.by_name(TEMPLATES)
    schedules = awx.by_name(DATA["controller_schedules"])
    want = {"playbooks/backup.yml": "DAILY", "playbooks/tls_monitor.yml": "DAILY", "playbooks/dr_drill.yml": "MONTHLY"}
    got = {}
    for s in schedules.values():
        template = templates[s["unified_job_template"]]
        m = re.fullmatch(r"DTSTART;TZID=UTC:(\d{8}T\d{6}) RRULE:FREQ=(\w+);INTERVAL=(\d+)(;BYDAY=\w+)?", s["rrule"])
        assert m, f"{s['name']}: rrule {s['rrule']!r}"
        got[template["playbook"]] = m.group(2)
        if m.group(2) == "MONTHLY":
            assert m.group(3) == "3", "the DR drill is quarterly"
        asked = {q["variable"] for q in (template.get("survey_spec") or {}).get("spec", [])}
        assert set(s.get("extra_data", {})) <= asked
        required = {q["variable"] for q in (template.get("survey_spec") or {}).get("spec", []) if q.get("required")}
        assert required <= set(s.get("extra_data", {})) | set(awx.survey_defaults(template)), \
            f"{s['name']}: a scheduled run cannot answer {required}"
    assert got == want


def test_apply_playbook_syntax_and_lint():
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", str(APPLY)],
                         capture_output=True, text=True, env=ansible_env(callback="default"), cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    text = APPLY.read_text()
    assert "no_log: true" in text.split("awx.awx.credential:")[1].split("- name:")[0]
    assert "hosts: localhost" in text and "on purpose" in text
