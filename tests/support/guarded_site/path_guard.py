"""Records every file a test process opens outside the repository, the temp dir and the system.

The suite must stand alone: a fresh clone with no sibling folders passes `make test`. So while
tests run, every Python process (pytest itself, and through `sitecustomize` every subprocess: the
CLI, emulated workers, VMs and Modal containers, the engines) carries an audit hook that notes
each `open` of an existing path, and each listing of a directory, outside:

- the repository (its `.venv` and `.cache` included) and the temp dir (test homes, `HOME`);
- the Python installation (`sys.prefix` and friends);
- the system's own trees (/proc, /sys, /dev, /etc, /usr, /lib, /run, ...);
- the package sources pip is configured with (find-links folders, `file://` indexes), which
  `pip wheel` reads as it would download from an index (the packaging tests build the wheel).

Opening a path that does not exist reads nothing and is not noted. Notes go, one line each, to
the file named by DEPLOYER_TEST_PATH_LOG; `tests/conftest.py` fails the test that caused them.
Standard library only: this runs at every interpreter start while the suite is running.
"""

from __future__ import annotations

import configparser
import os
import sys
import tempfile

LOG_ENV = "DEPLOYER_TEST_PATH_LOG"
EVENTS = {"open": "opened", "os.listdir": "listed", "os.scandir": "listed"}  # audit event -> the note's verb
SYSTEM_ROOTS = ("/proc", "/sys", "/dev", "/etc", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/run",
                "/var/lib", "/var/cache", "/var/tmp", "/tmp")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def allowed_roots() -> tuple[str, ...]:
    """Directories a test process may read from (each ends with a separator)."""
    roots = {REPO, tempfile.gettempdir(), sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *SYSTEM_ROOTS}
    roots = {r for r in roots if r} | {os.path.realpath(r) for r in roots if r}
    return tuple(sorted(os.path.join(r, "") for r in roots))


def package_sources() -> tuple[str, ...]:
    """The local folders pip takes packages from, from its environment variables and its config
    files (each ends with a separator). Read only when a path outside the other roots turns up."""
    values = [os.environ.get(name, "") for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")]
    config = configparser.ConfigParser()
    config.read([path for path in (os.environ.get("PIP_CONFIG_FILE"), "/etc/pip.conf", "/etc/xdg/pip/pip.conf",
                                   os.path.expanduser("~/.config/pip/pip.conf")) if path])
    for section in config.sections():
        values += [config.get(section, key, fallback="") for key in ("find-links", "index-url", "extra-index-url")]
    folders = (item.removeprefix("file://") for value in values for item in value.split())
    return tuple(os.path.join(folder, "") for folder in folders if folder.startswith("/"))


def outside(path: str, roots: tuple[str, ...]) -> bool:
    """Whether `path` (absolute or relative to the working directory) lies outside every root,
    symlinks followed. Costs no system call for a path that is plainly inside."""
    if os.path.join(os.path.abspath(path), "").startswith(roots):
        return False
    return not os.path.join(os.path.realpath(path), "").startswith(roots)


class _Guard:
    """The audit hook. The log is looked up when a note is written, so a process may change
    DEPLOYER_TEST_PATH_LOG after start-up (pytest-xdist workers each take their own)."""

    def __init__(self) -> None:
        self.roots = allowed_roots()
        self.sources: tuple[str, ...] | None = None  # package_sources(), read on first need
        self.busy = False

    def __call__(self, event: str, args: tuple) -> None:
        verb = EVENTS.get(event)
        if verb is None or self.busy:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return  # a file descriptor: what it refers to was opened (and checked) before
        self.busy = True  # our own stat and write below raise events too
        try:
            if outside(path, self.roots) and os.path.exists(path) and self.not_a_package_source(path):
                self.note(verb, path)
        finally:
            self.busy = False

    def not_a_package_source(self, path: str) -> bool:
        if self.sources is None:
            self.sources = package_sources()
        return not self.sources or outside(path, self.sources)

    def note(self, verb: str, path: str) -> None:
        log_path = os.environ.get(LOG_ENV)
        if not log_path:
            return
        line = f"{os.getpid()} {' '.join(sys.argv[:3])[:120]!r} {verb} {os.path.abspath(path)}\n"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode(errors="replace"))
        finally:
            os.close(fd)


_MARK = "_deployer_path_guard"  # on `sys`: this module may be imported under two names


def install_from_env() -> bool:
    """Install the audit hook when DEPLOYER_TEST_PATH_LOG is set, once per process. Audit hooks
    cannot be removed: this lasts for the life of the process."""
    if getattr(sys, _MARK, False):
        return True
    if not os.environ.get(LOG_ENV):
        return False
    sys.addaudithook(_Guard())
    setattr(sys, _MARK, True)
    return True
