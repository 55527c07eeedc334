#!/usr/bin/env python
"""coderd's command line: `python manage.py server`, `provisionerd`, and Django's own commands."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coderd.settings")
    from django.core.management import execute_from_command_line

    from coderd.env import EnvError, invoked_as

    try:
        execute_from_command_line(sys.argv)
    except EnvError as exc:
        # A bad CODER_* value: one line naming the variable, never a traceback.
        print(f"{invoked_as()}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
