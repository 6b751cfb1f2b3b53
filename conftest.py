# Root conftest: makes the shared test kit (real services, test PKI) available to every suite.
pytest_plugins = ["testkit.pytest_plugin", "testkit.broker"]
pytest_plugins += ["testkit.testbed_fixtures"]  # multi-host test bed: tests/testbed, tests/e2e_split, tests/e2e_compose
pytest_plugins += ["testkit.cpu_report"]  # where the session's CPU goes, printed at its end
