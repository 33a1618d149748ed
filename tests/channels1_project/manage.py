#!/usr/bin/env python
"""Django entry point of the Channels 1 test project (runworker)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "c1app.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
