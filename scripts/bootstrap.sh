#!/usr/bin/env bash
# Install everything `make up` and `make test` need on a fresh Debian 12 machine:
# Debian packages (redis, nginx, pebble; docker.io, debootstrap, nftables for the multi-host
# test bed), the project venv from pinned dependencies, the collections, and the ansible-test
# pip stand-in (the real bootstrap host is unreachable here).
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${VENV:-$REPO/.venv}
PY=${PYTHON:-python3}

need_apt=()
# docker.io debootstrap nftables: the multi-host test bed (testkit/docker_engine.py) runs its own
# dockerd, builds its base image with debootstrap and removes dockerd's nft tables with nft.
# prometheus*: the monitoring role (issue 17); openjdk-17-jre-headless: ansible-rulebook's Drools.
for pkg in redis-server nginx pebble docker.io debootstrap nftables \
           prometheus prometheus-alertmanager prometheus-blackbox-exporter \
           prometheus-postgres-exporter prometheus-redis-exporter prometheus-node-exporter \
           openjdk-17-jre-headless; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
[ -x /usr/lib/postgresql/15/bin/postgres ] || { echo "bootstrap: PostgreSQL 15 server binaries missing (apt-get install postgresql-15)"; exit 1; }

stamp="$VENV/.cullis-deps"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: building venv $VENV from pinned dependencies"
  [ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c constraints.txt -e .
  echo "$want" > "$stamp"
fi

# ansible-rulebook (Event-Driven Ansible, extensions/eda/) in a venv of its own: it pins
# websockets 15.x, the project venv 17.x. It runs the playbooks with the project venv's ansible.
EDA_VENV=${EDA_VENV:-$REPO/.venv-eda}
eda_stamp="$EDA_VENV/.cullis-deps"
eda_want=$(sha256sum constraints-eda.txt | cut -d' ' -f1)
if [ ! -x "$EDA_VENV/bin/ansible-rulebook" ] || [ "$(cat "$eda_stamp" 2>/dev/null)" != "$eda_want" ]; then
  echo "bootstrap: building $EDA_VENV (ansible-rulebook)"
  [ -x "$EDA_VENV/bin/python" ] || $PY -m venv "$EDA_VENV"
  "$EDA_VENV/bin/pip" install -q --upgrade pip
  "$EDA_VENV/bin/pip" install -q -r constraints-eda.txt
  echo "$eda_want" > "$eda_stamp"
fi

# Collections: the ansible package ships them; requirements.yml pins the same versions for
# ansible-core-only installs. Installing would be a no-op here, so only check.
"$VENV/bin/ansible-galaxy" collection list community.crypto >/dev/null 2>&1 || \
  "$VENV/bin/ansible-galaxy" collection install -r requirements.yml -p .ansible/collections

# ansible-test sanity/units bootstrap pip from a host we cannot reach: give it a stand-in.
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
for v in 24_2 25_0 25_1 25_3; do
  cat > "$cache/get_pip_$v.py" <<'PYEOF'
# Stand-in for get-pip.py (no access to its host): bootstrap pip with ensurepip in a
# subprocess (in-process it would reset PIP_CONFIG_FILE), then install what was asked.
import subprocess, sys
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PYEOF
done
echo "bootstrap: ok"
