"""The programs some tests need beside the Python packages: Debian's ``chromium`` (renders the HTML reports),
``redis-server`` (the Redis state backend) and ``promtool`` (package ``prometheus``: checks the alerting rules).

The test command installs what the tests need: :func:`ensure` finds a program, and when it is missing and the
machine can (root, with apt-get), installs its Debian package first — once per session — so ``pytest`` passes on a
fresh machine. Anywhere else it fails with the command to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

__all__ = ["ensure"]

_lock = threading.Lock()
_updated = False


def _find(binary: str) -> str | None:
    path = f"/usr/bin/{binary}"
    return path if os.access(path, os.X_OK) else shutil.which(binary)


def ensure(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` with apt-get if it is missing."""
    global _updated
    found = _find(binary)
    if found:
        return found
    with _lock:
        found = _find(binary)
        if found:
            return found
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            raise RuntimeError(
                f"The tests need {binary} (Debian package {package}), which is not installed; install it with "
                f"`sudo apt-get install -y {package}` and run the tests again."
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not _updated:
            subprocess.run([apt, "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
            _updated = True
        done = subprocess.run(
            [apt, "install", "-y", "-qq", "--no-install-recommends", package],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"Installing {package} with apt-get failed: {done.stderr.strip()[-500:]}")
        found = _find(binary)
        if not found:
            raise RuntimeError(f"apt-get installed {package}, but {binary} is still not on the PATH.")
        return found
