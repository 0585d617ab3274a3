"""A real Kafka-protocol broker for the tests: Tansu (agentcli/bench/tansu.py) plus the client settings tests use.

The session fixture ``kafka_broker`` (conftest.py) starts one; a missing binary raises :class:`BrokerUnavailable`
and the Kafka tests fail rather than skip. Multi-process tests import :class:`TansuBroker` and
:func:`kafka_settings` from here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from types import TracebackType

from agentcli.bench.tansu import BrokerUnavailable, TansuBroker, free_port, tansu_binary

__all__ = [
    "TEST_KAFKA_SETTINGS",
    "BrokerUnavailable",
    "S3Emulator",
    "TansuBroker",
    "free_port",
    "kafka_settings",
    "tansu_binary",
]


#: Client settings for tests against Tansu (see KAFKA-BROKER.md): a group join takes about half of the session
#: timeout, a fetch always waits the full fetch_max_wait_ms, and the idempotent producer is not supported.
TEST_KAFKA_SETTINGS: dict[str, object] = {
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
    "fetch_max_wait_ms": 5,
    "enable_idempotence": False,
    "linger_ms": 1,
    "commit_interval_ms": 20,
    "rebalance_grace_s": 2.0,
    "connect_timeout_s": 10.0,
    "delivery_timeout_s": 10.0,
    "request_timeout_ms": 5000,
}


def kafka_settings(bootstrap: str, *, prefix: str = "", **overrides: object) -> dict[str, object]:
    """A ``[kafka]`` table for tests: ``config_from_dict({"bus": {"backend": "kafka"}, "kafka": ...})``."""
    return {**TEST_KAFKA_SETTINGS, "bootstrap_servers": bootstrap, "topic_prefix": prefix, **overrides}


class S3Emulator:
    """moto's S3 server on 127.0.0.1 with the bucket ``tansu``: durable storage for a Tansu broker that is
    killed and restarted (``TansuBroker(storage="s3://tansu/", env=s3.broker_env)``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def broker_env(self) -> dict[str, str]:
        # Dummy credentials: moto accepts any; they only have to be present for Tansu's S3 client.
        return {
            "AWS_ACCESS_KEY_ID": "agentflow-test",
            "AWS_SECRET_ACCESS_KEY": "agentflow-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> S3Emulator:
        try:
            import boto3
        except ImportError:
            raise BrokerUnavailable("The S3 emulator needs moto[server]; run pip install -e '.[dev]'.") from None
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise BrokerUnavailable("moto's S3 server did not start; is moto[server] installed?") from None
                time.sleep(0.05)
        env = self.broker_env
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        ).create_bucket(Bucket="tansu")
        return self

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> S3Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
