from pathlib import Path

from django.conf import settings


def test_it_keeps_tests_out_of_the_real_data_folder():
    assert Path(settings.DATA_DIR).name.startswith("coderd-test-")
    assert not str(settings.DATA_DIR).startswith(str(Path.home() / ".local"))
