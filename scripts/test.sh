#!/usr/bin/env bash
# The whole test suite, stage by stage. Every stage runs even when an earlier one failed; the
# exit status is non-zero if any failed. Usage: scripts/test.sh [all|lint|sanity|units|release|pytest|split]
# (with `all`, the split stage overlaps the others: see below)
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
run_pytest() {
  # broker_src tests, module integration tests and end-to-end stack tests, all on real services.
  # (the multi-host test bed and the split topology are the `split` stage)
  pytest -p no:cacheprovider --durations=30 broker_src/tests tests --ignore=tests/testbed --ignore=tests/e2e_split \
    --ignore=tests/e2e_compose
}
run_split() {
  # The multi-host test bed (Docker engine, bare Debian hosts over SSH) and the split-topology
  # end-to-end tests on it (issue 11), and the compose runtime on the same engine (issue 12).
  # Skips with its reason where the engine cannot run.
  pytest -p no:cacheprovider --durations=30 tests/testbed tests/e2e_split tests/e2e_compose
}

# `all` runs the split stage in the background, next to the others: it spends most of its time
# building images (network, disk) and waiting on six containers over SSH, while the other stages
# keep one core busy. On this 2-core machine that overlap saves about the split stage's length.
# CULLIS_TEST_SERIAL=1 runs the stages one after the other (for reading a failure in order).
split_pid=""
if [ "$what" = all ] && [ -z "${CULLIS_TEST_SERIAL:-}" ]; then
  split_log=$(mktemp -t cullis-split-stage.XXXXXX)
  ( stage split run_split; [ ${#failed[@]} -eq 0 ] ) > >(sed -u 's/^/[split] /' | tee "$split_log") 2>&1 &
  split_pid=$!
  echo "=== stage split: running in the background (pid $split_pid, log $split_log)"
fi

case "$what" in
  all|lint) stage lint run_lint ;;&
  all|sanity) stage sanity run_sanity ;;&
  all|units) stage units run_units ;;&
  all|release) stage release run_release ;;&
  all|pytest) stage pytest run_pytest ;;&
  split) stage split run_split ;;
  all) [ -n "$split_pid" ] || stage split run_split ;;
esac

if [ -n "$split_pid" ]; then
  echo "=== waiting for the background split stage (pid $split_pid)"
  wait "$split_pid" || failed+=(split)
fi

if [ ${#failed[@]} -gt 0 ]; then echo "FAILED stages: ${failed[*]}"; exit 1; fi
echo "all stages passed"
