"""Test set-up shared by every test file."""

# CODER_DATA_DIR is set by tests/testenv.py, loaded early through pyproject's addopts.

pytest_plugins = ["tests.fixtures", "tests.services"]


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _close_executor_connections():
    """Async tests run their database calls (and consumers theirs) in asgiref's one shared thread.
    With persistent connections (CONN_MAX_AGE) a connection a test opened there would outlive it,
    and the next test without database access would fail on Channels' close_old_connections."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    executor = SyncToAsync.single_thread_executor
    if not getattr(executor, "_shutdown", False):
        executor.submit(connections.close_all).result(timeout=30)
