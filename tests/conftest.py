"""Test set-up shared by every test file."""

# CODER_DATA_DIR is set by tests/testenv.py, loaded early through pyproject's addopts.

pytest_plugins = ["tests.fixtures", "tests.service_fixtures"]
