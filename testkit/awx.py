"""The AWX / AAP configuration as code of awx/, read the way the controller reads it.

`load()` returns the controller objects of awx/*.yml with awx/settings.yml rendered into them
(as the apply playbook does), keeping `!unsafe` values (credential injectors) raw for the
controller. `playbook_corpus()` gathers the text a playbook runs (itself, imported playbooks, the
roles it uses: tasks, defaults, templates, argument specs) so a test can tell whether a variable
is one the playbook reads. `inject()` renders a credential type's injectors like AWX does at job
start (0600 files whose path is `tower.filename[.<name>]`, environment, extra vars), and
`run_job()` runs a job template's playbook through ansible-runner, the library AWX runs jobs with.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.sandbox
import yaml

from testkit.ansible import REPO

AWX_DIR = REPO / "awx"
COLLECTION = REPO / "collections" / "ansible_collections" / "cullis" / "broker"


class Unsafe(str):
    """A `!unsafe` scalar: left for the controller to render."""


def _unsafe(loader, node):
    if isinstance(node, yaml.MappingNode):
        return {k: _wrap(v) for k, v in loader.construct_mapping(node, deep=True).items()}
    if isinstance(node, yaml.SequenceNode):
        return [_wrap(v) for v in loader.construct_sequence(node, deep=True)]
    return Unsafe(loader.construct_scalar(node))


def _wrap(value):
    if isinstance(value, dict):
        return {k: _wrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return Unsafe(value) if isinstance(value, str) else value


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!unsafe", _unsafe)


def read_yaml(path: Path):
    return yaml.load(Path(path).read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass


def _render(value, context: dict):
    if isinstance(value, Unsafe):
        return value
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if isinstance(value, str) and "{{" in value:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        return env.from_string(value).render(context)
    return value


def load(overrides: dict | None = None) -> dict:
    """Every controller_* list of awx/, settings rendered in; secrets can be given in overrides."""
    settings = read_yaml(AWX_DIR / "settings.yml")
    settings.update(overrides or {})
    data: dict = {}
    for path in sorted(AWX_DIR.glob("*.yml")):
        if path.name == "settings.yml":
            continue
        for key, value in (read_yaml(path) or {}).items():
            data[key] = value
    context = dict(settings)
    context.setdefault("cullis_awx_vault_keys_json", "<vault keys>")
    context.setdefault("cullis_awx_admin_secret", "<admin secret>")
    context.setdefault("cullis_awx_backup_key", "<backup key>")
    return _render(data, context)


def by_name(items: list[dict]) -> dict:
    return {item["name"]: item for item in items}


# ---- what a playbook reads -------------------------------------------------------------------

_ROLE_REF = re.compile(r"(?:role|name):\s*[\"']?cullis\.broker\.(\w+)")
_IMPORT_PB = re.compile(r"import_playbook:\s*[\"']?([\w./-]+)")


def _role_files(role: str) -> list[Path]:
    root = COLLECTION / "roles" / role
    files = []
    for sub in ("tasks", "defaults", "vars", "handlers", "templates", "meta"):
        if (root / sub).is_dir():
            files += sorted(p for p in (root / sub).rglob("*") if p.is_file())
    return files


def playbook_corpus(playbook: str) -> str:
    """The text of a playbook and of everything it pulls in (imported playbooks, roles)."""
    seen_roles: set[str] = set()
    seen_pbs: set[Path] = set()
    texts: list[str] = []

    def add_text(text: str, base: Path):
        texts.append(text)
        for role in _ROLE_REF.findall(text):
            if role not in seen_roles and (COLLECTION / "roles" / role).is_dir():
                seen_roles.add(role)
                for f in _role_files(role):
                    add_text(f.read_text(errors="replace"), f.parent)
        for rel in _IMPORT_PB.findall(text):
            add_pb((base / rel).resolve())

    def add_pb(path: Path):
        if path in seen_pbs or not path.is_file():
            return
        seen_pbs.add(path)
        add_text(path.read_text(), path.parent)

    add_pb((REPO / playbook).resolve())
    return "\n".join(texts)


def reads_var(corpus: str, name: str) -> bool:
    """The variable (or environment variable) is used by the playbook, outside comments."""
    code = "\n".join(line.split(" #", 1)[0] for line in corpus.splitlines() if not line.lstrip().startswith("#"))
    return re.search(r"(?<![\w.])" + re.escape(name) + r"(?!\w)", code) is not None


def reads_env(corpus: str, name: str) -> bool:
    return re.search(r"lookup\(\s*'ansible\.builtin\.env'\s*,\s*'" + re.escape(name) + "'", corpus) is not None


_TASKS_FROM = re.compile(r"name:\s*cullis\.broker\.(\w+)\s*\n\s*tasks_from:\s*(\w+)")


def _asserts(tasks: list):
    """Every assert module's arguments in a task list, blocks included."""
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        args = task.get("ansible.builtin.assert") or task.get("assert")
        if isinstance(args, dict):
            yield args
        for key in ("block", "rescue", "always"):
            yield from _asserts(task.get(key))


def required_vars(playbook: str) -> set[str]:
    """Variables the playbook insists on: `X is defined` in an assert, `required: true` in a
    role argument spec (options without a default)."""
    required: set[str] = set()
    text = (REPO / playbook).read_text()
    plays = yaml.safe_load(text) or []
    tasks: list = []
    for play in plays:
        tasks += play.get("tasks", []) + play.get("pre_tasks", [])
    # a thin wrapper's work (and its asserts) lives in the role task file it includes
    for role, tasks_from in _TASKS_FROM.findall(text):
        task_file = COLLECTION / "roles" / role / "tasks" / f"{tasks_from}.yml"
        if task_file.is_file():
            tasks += yaml.safe_load(task_file.read_text()) or []
    for assert_args in _asserts(tasks):
        that = assert_args.get("that")
        for cond in that if isinstance(that, list) else [that]:
            required.update(re.findall(r"^\s*(\w+) is defined\s*$", str(cond)))
    corpus = playbook_corpus(playbook)
    # only the entry points the playbook runs (main, and each tasks_from it names); a loop_var the
    # playbook sets itself (rolling_restart.yml's cullis_rolling_broker) is not asked of anyone
    entry_points = {"main", *re.findall(r"^[^#\n]*tasks_from:\s*(\w+)", corpus, re.M)}
    for role in set(_ROLE_REF.findall(corpus)):
        spec_file = COLLECTION / "roles" / role / "meta" / "argument_specs.yml"
        if spec_file.is_file():
            for name, entry in (yaml.safe_load(spec_file.read_text()) or {}).get("argument_specs", {}).items():
                if name not in entry_points:
                    continue
                for opt, spec in (entry.get("options") or {}).items():
                    if spec.get("required"):
                        required.add(opt)
    return required - set(re.findall(r"^[^#\n]*loop_var:\s*(\w+)", corpus, re.M))


# ---- credentials, surveys, jobs -------------------------------------------------------------

@dataclass
class Injection:
    extra_vars: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # path -> content
    secrets: list = field(default_factory=list)


def injected_names(cred_type: dict) -> tuple[set[str], set[str]]:
    inj = cred_type.get("injectors") or {}
    return set((inj.get("extra_vars") or {}).keys()), set((inj.get("env") or {}).keys())


def inject(cred_type: dict, inputs: dict, private_dir: Path) -> Injection:
    """What the controller does at job start for one credential (awx CredentialType.inject_credential):
    each `file` template becomes a 0600 file, `tower.filename` (or `tower.filename.<name>`) its
    path; env and extra_vars are rendered with the inputs and those paths."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    inj = cred_type.get("injectors") or {}
    out = Injection()
    secret_ids = {f["id"] for f in cred_type["inputs"]["fields"] if f.get("secret")}
    out.secrets = [str(inputs[i]).strip() for i in secret_ids if inputs.get(i)]
    filenames: dict = {}
    cred_dir = private_dir / "credentials"
    cred_dir.mkdir(mode=0o700, exist_ok=True)
    for key, template in (inj.get("file") or {}).items():
        fd, path = tempfile.mkstemp(dir=cred_dir)
        content = env.from_string(template).render(inputs)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        os.chmod(path, 0o600)
        out.files[path] = content
        filenames[key.partition(".")[2] or None] = path

    class _Filename(str):
        pass

    tower: dict = {}
    if None in filenames:
        tower["filename"] = filenames[None]
    elif filenames:
        fn = _Filename("")
        for name, path in filenames.items():
            setattr(fn, name, path)
        tower["filename"] = fn
    context = dict(inputs, tower=tower)
    for name, template in (inj.get("env") or {}).items():
        out.env[name] = env.from_string(template).render(context)
    for name, template in (inj.get("extra_vars") or {}).items():
        out.extra_vars[name] = env.from_string(template).render(context)
    return out


def survey_defaults(template: dict) -> dict:
    if not template.get("survey_enabled"):
        return {}
    # an optional question left empty is not passed (the playbook's own default applies)
    return {q["variable"]: q["default"] for q in template["survey_spec"]["spec"]
            if q.get("default") not in (None, "")}


class LaunchRefused(Exception):
    """The controller would refuse this launch (a required survey answer is missing...)."""


@dataclass
class Job:
    template: str
    status: str
    rc: int
    stats: dict
    events: list
    stdout: str
    artifacts: Path
    injections: list

    def changed(self) -> int:
        return sum((self.stats.get("changed") or {}).values())

    def failures(self) -> int:
        return sum((self.stats.get("failures") or {}).values()) + sum((self.stats.get("dark") or {}).values())

    def task_events(self, task: str) -> list[dict]:
        return [e for e in self.events if e.get("event", "").startswith("runner_on_")
                and e.get("event_data", {}).get("task") == task]


def run_job(data: dict, template_name: str, *, inventory: Path, credential_inputs: dict,
            answers: dict | None = None, extra_data: dict | None = None, workdir: Path,
            job_type: str | None = None, timeout: int = 900) -> Job:
    """Launch a job template the way AWX does: survey defaults + answers (+ workflow extra_data)
    over the template's extra_vars, credentials injected, extra vars handed over in the private
    data dir's env/extravars file (`-e @file`, like AWX: never on the command line), the project
    as working directory."""
    import ansible_runner

    template = by_name(data["controller_templates"])[template_name]
    types = by_name(data["controller_credential_types"])
    creds = by_name(data["controller_credentials"])
    private_dir = Path(tempfile.mkdtemp(prefix="job-", dir=workdir))
    extravars = dict(template.get("extra_vars") or {})
    extravars.update(survey_defaults(template))
    extravars.update(answers or {})
    extravars.update(extra_data or {})
    unanswered = [q["variable"] for q in (template.get("survey_spec") or {}).get("spec", [])
                  if template.get("survey_enabled") and q.get("required") and q["variable"] not in extravars]
    if unanswered:
        raise LaunchRefused(f"{template_name}: survey questions without an answer: {unanswered}")
    job_type = job_type or template.get("job_type", "run")
    if job_type != "run" and not template.get("ask_job_type_on_launch"):
        raise LaunchRefused(f"{template_name}: job type is not asked on launch")
    envvars = {"PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    injections = []
    for cred_name in template.get("credentials") or []:
        cred = creds[cred_name]
        injection = inject(types[cred["credential_type"]], credential_inputs[cred_name], private_dir)
        injections.append(injection)
        extravars.update(injection.extra_vars)
        envvars.update(injection.env)
    result = ansible_runner.run(
        private_data_dir=str(private_dir), project_dir=str(REPO), playbook=template["playbook"],
        inventory=str(inventory), extravars=extravars, envvars=envvars,
        cmdline="--check" if job_type == "check" else None,
        quiet=True, timeout=timeout, ident=re.sub(r"\W+", "-", template_name.lower()))
    events = list(result.events)
    stdout = result.stdout.read()
    return Job(template_name, result.status, result.rc, result.stats or {}, events, stdout,
               Path(result.config.artifact_dir), injections)


def leaked(job: Job, secrets: list[str]) -> list[str]:
    """Which secrets (by position, never by value) appear in which artifact of the job."""
    found = []
    for path in sorted(job.artifacts.rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            found += [f"secret #{i} in {path.relative_to(job.artifacts)}"
                      for i, s in enumerate(secrets) if s and len(s) >= 8 and s in text]
    return found


def event_json(job: Job) -> str:
    return json.dumps(job.events)
