"""Test set-up shared by every test file."""

import os
import tempfile

# Each test process gets its own data folder, so nothing touches the user's real one.
os.environ.setdefault("CODER_DATA_DIR", tempfile.mkdtemp(prefix="coderd-test-"))

pytest_plugins = ["tests.fixtures", "tests.services"]
