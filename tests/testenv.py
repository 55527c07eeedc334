"""Loaded with `-p tests.testenv` (pyproject addopts), before pytest-django reads the settings.

Each test process gets its own data folder, so no test touches the user's real one (a conftest.py
is read too late: pytest-django has imported the settings by then).
"""

import os
import tempfile

os.environ.setdefault("CODER_DATA_DIR", tempfile.mkdtemp(prefix="coderd-test-"))
