"""Loaded with `-p tests.testenv` (pyproject addopts), before pytest-django reads the settings.

Each test process gets its own data folder, so no test touches the user's real one (a conftest.py
is read too late: pytest-django has imported the settings by then).
"""

import atexit
import os
import shutil
import tempfile

if "CODER_DATA_DIR" not in os.environ:
    _data_dir = tempfile.mkdtemp(prefix="coderd-test-")
    os.environ["CODER_DATA_DIR"] = _data_dir
    atexit.register(shutil.rmtree, _data_dir, ignore_errors=True)
