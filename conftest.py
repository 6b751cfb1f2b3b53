# Root conftest: makes the shared test kit (real services, test PKI) available to every suite.
# First: ansible-playbook runs forked warm (testkit/playbook_server.py; the others import it)
pytest_plugins = ["testkit.playbook_server", "testkit.pytest_plugin", "testkit.broker"]
pytest_plugins += ["testkit.testbed_fixtures"]  # multi-host test bed: tests/testbed, tests/e2e_split, tests/e2e_compose
pytest_plugins += ["testkit.cpu_report"]  # where the session's CPU goes, printed at its end
pytest_plugins += ["testkit.measurements"]  # what the HA tests measured, printed at its end
