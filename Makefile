# The two commands: `make up` (stack + smoke test) and `make test` (every test).
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export CULLIS_STACK_DIR ?= $(CURDIR)/.stack
INVENTORY ?= inventories/local

.PHONY: deps up down smoke test test-fast lint sanity units release pytest modules e2e split compose help

help:
	@echo "make up          deploy the whole local stack and run its smoke test"
	@echo "                 (cullis_monitoring=true: also Prometheus/Alertmanager, playbooks/monitoring.yml)"
	@echo "make down        stop the stack (PURGE=1 also deletes $$CULLIS_STACK_DIR)"
	@echo "make test        run every test (installs and starts what they need)"
	@echo "make test-fast   lint, unit tests and the tests not marked slow or stack (no deployed stack)"

deps:
	@scripts/bootstrap.sh

up: deps
	ansible-playbook -i $(INVENTORY) playbooks/deploy.yml
	ansible-playbook -i $(INVENTORY) playbooks/smoke.yml
ifeq ($(cullis_monitoring),true)
	ansible-playbook -i $(INVENTORY) playbooks/monitoring.yml
endif
	@ansible-playbook -i $(INVENTORY) playbooks/summary.yml

smoke: deps
	ansible-playbook -i $(INVENTORY) playbooks/smoke.yml

down: deps
	ansible-playbook -i $(INVENTORY) playbooks/down.yml -e purge=$(if $(PURGE),true,false)

test: deps
	@scripts/test.sh all

# The quick loop: no deployed stack (marker `stack`), nothing marked `slow` (> ~30 s).
test-fast: deps
	@scripts/test.sh lint
	@scripts/test.sh units
	pytest -p no:cacheprovider -m "not slow and not stack" broker_src/tests tests \
		--ignore=tests/testbed --ignore=tests/e2e_split --ignore=tests/e2e_compose

lint sanity units release pytest modules e2e split compose: deps
	@scripts/test.sh $@
