"""Loaded at start-up by every Python subprocess of the test suite (this folder is on their
PYTHONPATH): installs the path guard, see path_guard.py."""

import path_guard

path_guard.install_from_env()
