#!/usr/bin/env bash
# The whole test suite, stage by stage. Every stage runs even when an earlier one failed; the
# exit status is non-zero if any failed. Usage:
#   scripts/test.sh [all|lint|sanity|units|release|pytest|modules|e2e|split|compose]
# (`pytest` = `modules` + `e2e`; with `all`, the modules, split, hapg, compose and static (lint,
# sanity, units, release) stages overlap e2e, and `hapg` is the Patroni part of `split` run beside
# it: see below)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${VENV:-$REPO/.venv}
export PATH="$VENV/bin:$PATH"
export ANSIBLE_CONFIG="$REPO/ansible.cfg"
COLL="$REPO/collections/ansible_collections/cullis/broker"
what=${1:-all}
failed=()

stage() {  # stage NAME COMMAND...
  local name=$1; shift
  echo "=== stage $name: $*"
  local t0=$SECONDS
  if "$@"; then echo "=== stage $name: ok ($((SECONDS - t0)) s)"
  else echo "=== stage $name: FAILED ($((SECONDS - t0)) s)"; failed+=("$name"); fi
}

run_lint() {
  local paths=(playbooks "$COLL")
  [ -d roles ] && paths+=(roles)
  ansible-lint --offline -q "${paths[@]}"
}
run_sanity() { (cd "$COLL" && ansible-test sanity --python 3.11 --local --color no); }
run_units() { (cd "$COLL" && ansible-test units --python 3.11 --local --color no); }
run_release() {
  # changelog fragments and every plugin's docs, as a release needs them (antsibull); the tarball,
  # CHANGELOG.rst from `antsibull-changelog release`, the EE build context and introspection are
  # tests/release (pytest stage)
  (cd "$COLL" && antsibull-changelog lint) &&
  (cd "$COLL" && ANSIBLE_COLLECTIONS_PATH="$REPO/collections" antsibull-docs lint-collection-docs --plugin-docs .)
}
# The pytest suite is two stages with no fixture in common, so they can run side by side:
# - modules: broker_src tests, module integration tests, rules, release, AWX and static checks, each
#   on the real services the test kit starts for that session (its own free ports and temp dirs);
# - e2e: the deployed stacks (tests/e2e: one session stack shared by every test in it).
# The e2e files that deploy a stack of their own and use nothing of the session stack run in the
# modules stage, which otherwise ends long before e2e (real-broker quirks, the first ACME deploy,
# preflight on a machine never deployed).
E2E_OWN_STACK=(tests/e2e/test_quirks.py tests/e2e/test_acme_first_deploy.py tests/e2e/test_preflight.py)
run_modules() {
  local dirs=() d
  for d in tests/*/; do  # every test directory but the stacks' and the test bed's
    case "$d" in tests/e2e/|tests/testbed/|tests/e2e_split/|tests/e2e_compose/|tests/__pycache__/) ;; *) dirs+=("$d") ;; esac
  done
  pytest -p no:cacheprovider --durations=30 broker_src/tests "${dirs[@]}" "${E2E_OWN_STACK[@]}"
}
run_e2e() { pytest -p no:cacheprovider --durations=30 tests/e2e "${E2E_OWN_STACK[@]/#/--ignore=}"; }
run_split() {
  # The multi-host test bed (Docker engine, bare Debian hosts over SSH) and the split-topology
  # end-to-end tests on it (issue 11), with the HA tests (issue 18: the raft of three on the split
  # topology, Patroni on the DR drill's site). Skips with its reason where the engine cannot run.
  pytest -p no:cacheprovider --durations=30 tests/testbed tests/e2e_split "$@"
}
# The Patroni site (the DR drill's, from the split stack's backup set) and its tests: in `all`, a stage
# of its own on its own engine, given the split stack's set by the split stage through a directory
# (tests/e2e_split/conftest.py: DrSource, CULLIS_DR_HANDOFF); the split stage then skips these files.
HAPG_FILES=(tests/e2e_split/test_ha_postgres.py tests/e2e_split/test_split_dr.py)
# The split stack's Vault is a raft of three (issue 18) whose other two members share the database
# and cache hosts (testkit/testbed_fixtures.py): with two hosts of their own the split stage measured
# ~2940 CPU-s against ~2156 with one Vault, and `make test` had no room for them.
# CULLIS_SPLIT_VAULT_NODES=1 gives the one-Vault topology (test_ha_vault.py then skips, saying so).
run_split_giving() {
  CULLIS_DR_HANDOFF_ROLE=give run_split "${HAPG_FILES[@]/#/--ignore=}"
}
run_hapg() { CULLIS_DR_HANDOFF_ROLE=take pytest -p no:cacheprovider --durations=30 "${HAPG_FILES[@]}"; }
run_compose() {
  # The compose runtime (issue 12) on an engine of its own (the test kit's next engine slot: its
  # images come from the archive the split stage's engine saved, or are built under the image lock).
  pytest -p no:cacheprovider --durations=30 tests/e2e_compose
}

# `all` runs the split, hapg and modules stages in the background, next to the others, and the
# compose stage in the background once the split stage has deployed its stack (compose_when_room).
# The split stage with the Patroni tests in it was the longest lane (one pytest session, one test
# after the other): its Patroni half is the hapg stage, which deploys its site as soon as the split
# stage has deployed and backed up its stack. The machine is CPU-bound for nearly the whole run
# (vmstat: 0-5 % idle), so the overlaps mainly keep the end of the run from being one lane alone.
# Background stages print with a prefix (`[split] `, `[hapg] `, `[modules] `, `[compose] `);
# CULLIS_TEST_SERIAL=1 runs every stage one after the other (for reading a failure in order).
bg_pids=()
bg_logs=()
background() {  # background NAME FUNCTION
  local log
  log=$(mktemp -t "cullis-$1-stage.XXXXXX")
  ( stage "$1" "$2"; [ ${#failed[@]} -eq 0 ] ) > >(sed -u "s/^/[$1] /" | tee "$log") 2>&1 &
  bg_pids+=("$1:$!")
  bg_logs+=("$1:$log")
  echo "=== stage $1: running in the background (pid $!, log $log)"
}
running() { local x; for x in "${bg_pids[@]}"; do [ "${x%%:*}" = "$1" ] && return 0; done; return 1; }
pid_of() { local x; for x in "${bg_pids[@]}"; do [ "${x%%:*}" = "$1" ] && echo "${x#*:}"; done; }
compose_when_room() {
  # The compose stage's function in `all`. Its engine must not start while tests/testbed (first in
  # the split stage) starts and stops engines of its own: an engine that stops restores the host's
  # iptables under a starting one. So it starts once the split stage has handed the DR drill its
  # backup set (tests/testbed is over by then; ready.json or failed.txt), plus two minutes for the
  # hapg stage's engine and network to come up first, or once the modules or split stage has ended.
  # (It used to wait for the modules stage: in a rehearsal that was minute 55, and the compose
  # tests then ran last, ~25 minutes, while the other stages had ended or were ending.)
  local modules split waited=0
  modules=$(pid_of modules)
  split=$(pid_of split)
  while kill -0 "$modules" 2>/dev/null && kill -0 "$split" 2>/dev/null; do
    if [ -e "$CULLIS_DR_HANDOFF/ready.json" ] || [ -e "$CULLIS_DR_HANDOFF/failed.txt" ]; then
      [ "$waited" -ge 120 ] && break
      waited=$((waited + 5))
    fi
    sleep 5
  done
  echo "=== stage compose: starting (split stage handed over its backup set, or a stage ended)"
  run_compose
}
# The checks that deploy nothing (lint, sanity, units, release), one after the other. In `all` they
# are the background `static` stage: run before e2e they kept it from starting for 4-9 minutes,
# and e2e (one lane, one test after the other) was then the run's last lane, alone for its last
# minutes with the machine partly idle (a rehearsal: 60-70 % idle in its last 5 minutes).
run_static() {
  stage lint run_lint
  stage sanity run_sanity
  stage units run_units
  stage release run_release
  [ ${#failed[@]} -eq 0 ]  # stage records a failure in `failed` (this lane's subshell)
}
if [ "$what" = all ] && [ -z "${CULLIS_TEST_SERIAL:-}" ]; then
  CULLIS_DR_HANDOFF=$(mktemp -d -t cullis-dr-handoff.XXXXXX)
  export CULLIS_DR_HANDOFF
  trap 'rm -rf "$CULLIS_DR_HANDOFF"' EXIT  # a copy of a backup set and its keys (0700)
  background split run_split_giving
  background hapg run_hapg
  background modules run_modules
  background compose compose_when_room
  background static run_static
fi

case "$what" in
  all|lint) running static || stage lint run_lint ;;&
  all|sanity) running static || stage sanity run_sanity ;;&
  all|units) running static || stage units run_units ;;&
  all|release) running static || stage release run_release ;;&
  all|pytest|modules) running modules || stage modules run_modules ;;&
  all|pytest|e2e) stage e2e run_e2e ;;&
  all|split) running split || stage split run_split ;;&
  all|compose) running compose || stage compose run_compose ;;
esac

for x in "${bg_pids[@]}"; do
  echo "=== waiting for the background ${x%%:*} stage (pid ${x#*:})"
  wait "${x#*:}" || failed+=("${x%%:*}")
done

# A background stage's failures scroll by long before the run ends, and CI keeps only the tail of
# the output: repeat each failed test's summary line (pytest's `FAILED`/`ERROR` lines) last.
for x in "${bg_logs[@]}"; do
  name=${x%%:*}
  for f in "${failed[@]}"; do
    [ "$f" = "$name" ] && grep -E "^\[$name\] ((FAILED|ERROR) |=== stage .*: FAILED)" "${x#*:}" | sed "s/^/(repeated) /"
  done
done

if [ ${#failed[@]} -gt 0 ]; then echo "FAILED stages: ${failed[*]}"; exit 1; fi
echo "all stages passed"
