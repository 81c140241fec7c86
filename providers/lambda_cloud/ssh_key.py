"""The SSH key Lambda requires at launch (exactly one per instance).

Either the user names a key already in the Lambda account (`providers.lambda.ssh_key_name`), or
deployer uses its own key pair, made once with ssh-keygen under DEPLOYER_HOME/lambda/ (private
key 0600, never sent anywhere) and uploaded once under a name derived from the public key, so
every later deploy from this machine finds and reuses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from deployer.errors import InputError
from deployer.settings import Settings

AUTO_KEY_PLACEHOLDER = "deployer-<fingerprint of DEPLOYER_HOME/lambda/id_ed25519.pub>"


def key_path(settings: Settings) -> Path:
    """The private key's path (the public key is beside it, `.pub`)."""
    return settings.home / "lambda" / "id_ed25519"


def local_public_key(settings: Settings) -> str:
    """The public key text (`ssh-ed25519 AAAA... comment`), generating the pair on first use.

    Raises InputError when ssh-keygen is not installed."""
    private = key_path(settings)
    public = private.with_suffix(".pub")
    if not public.exists():
        if shutil.which("ssh-keygen") is None:
            raise InputError(
                "deployer needs ssh-keygen to make the SSH key Lambda requires",
                hint="install OpenSSH, or name an existing Lambda key in providers.lambda.ssh_key_name",
            )
        private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Several deploys may start at once from one DEPLOYER_HOME: one makes the pair, under a
        # lock, in temporary files renamed into place (the public key last), so nobody reads or
        # uploads half a pair.
        fd = os.open(private.parent / ".keygen.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not public.exists():
                tmp = private.with_name(f".{private.name}.{os.getpid()}")
                for stale in (tmp, tmp.with_name(tmp.name + ".pub")):
                    stale.unlink(missing_ok=True)
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deployer", "-f", str(tmp)],
                    check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                )
                os.replace(tmp, private)
                os.replace(tmp.with_name(tmp.name + ".pub"), public)
        finally:
            os.close(fd)
    return public.read_text().strip()


def same_key(a: str, b: str) -> bool:
    """Whether two public key lines hold the same key (comments ignored)."""
    return a.split()[:2] == b.split()[:2]


def auto_key_name(public_key: str) -> str:
    """`deployer-<12 hex>`: stable for one key pair, different for another machine's."""
    body = " ".join(public_key.split()[:2])
    return "deployer-" + hashlib.sha256(body.encode()).hexdigest()[:12]
