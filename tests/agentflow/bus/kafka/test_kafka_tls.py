"""TLS to the brokers, against a real TLS listener: a TLS-terminating proxy (Python's ssl server, certificates made
here) in front of a Tansu broker that advertises the proxy's address.

With the right CA the bus connects, publishes and consumes through it. With the wrong CA, or a TLS client against
a plaintext listener, start-up fails at once with an error that names TLS and the cause, where aiokafka alone
says "Unable to bootstrap" and the bus used to add "check that the brokers are up" after connect_timeout_s. A
missing or unreadable ssl_cafile/ssl_certfile is a ConfigError naming the key and the file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kafka_broker import TansuBroker, free_port, kafka_settings

from agentflow import BusUnavailableError, ConfigError, Event
from agentflow.bus.kafka import KafkaBus, client_options
from agentflow.config import KafkaConfig


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(directory: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"agentflow test {stem}"))
        .issuer_name(_name(f"agentflow test {stem}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem (signed the server's certificate), other-ca.pem (did not), server.pem + server.key for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    ca, ca_key = _ca(directory, "ca")
    _ca(directory, "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory


class TlsProxy:
    """Terminates TLS on ``port`` and pipes the bytes to a plaintext broker."""

    def __init__(self, certs: Path, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs / "server.pem", certs / "server.key")
        self.handshakes = 0
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TlsProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            for w in (writer, locals().get("up_writer")):
                if isinstance(w, asyncio.StreamWriter):
                    w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def tls_broker(certs: Path) -> AsyncIterator[tuple[TansuBroker, TlsProxy]]:
    upstream = free_port()
    proxy = TlsProxy(certs, upstream)
    with TansuBroker(port=upstream, advertised_port=proxy.port) as broker:
        async with proxy:
            yield broker, proxy


def tls_config(port: int, **overrides: object) -> KafkaConfig:
    settings = kafka_settings(f"127.0.0.1:{port}", prefix="tls.", security_protocol="SSL", **overrides)
    return msgspec.convert(settings, KafkaConfig)


async def test_with_the_right_ca_the_bus_publishes_and_consumes_over_tls(
    tls_broker: tuple[TansuBroker, TlsProxy], certs: Path
) -> None:
    _, proxy = tls_broker
    bus = KafkaBus(tls_config(proxy.port, ssl_cafile=str(certs / "ca.pem")), partitions=1)
    await bus.start()
    try:
        sub = await bus.subscribe("t", "g")
        await bus.publish("t", [Event(topic="t", payload=n, key="k", id=f"tls-{n}") for n in range(3)])
        got: list[object] = []
        async with asyncio.timeout(15):
            while len(got) < 3:
                items = sub.take_nowait(10)
                for item in items:
                    sub.ack(item)
                got += [getattr(item, "payload", None) for item in items]
                if not items:
                    await sub.wait()
        assert got == [0, 1, 2]
        await sub.aclose()
    finally:
        await bus.aclose()
    assert proxy.handshakes >= 1  # it went through the TLS listener


async def test_a_certificate_the_ca_did_not_sign_is_named_as_a_tls_error_at_once(
    tls_broker: tuple[TansuBroker, TlsProxy], certs: Path
) -> None:
    _, proxy = tls_broker
    bus = KafkaBus(tls_config(proxy.port, ssl_cafile=str(certs / "other-ca.pem"), connect_timeout_s=30.0))
    t0 = time.monotonic()
    with pytest.raises(BusUnavailableError) as info:
        await bus.start()
    await bus.aclose()
    message = str(info.value)
    assert f"the TLS handshake with 127.0.0.1:{proxy.port} failed: its certificate could not be verified" in message
    assert "unable to get local issuer certificate" in message and "kafka.ssl_cafile" in message
    assert "brokers are up" not in message
    assert time.monotonic() - t0 < 10  # not after connect_timeout_s (30 s) of retries


async def test_tls_against_a_plaintext_listener_is_named_as_a_tls_error(
    tls_broker: tuple[TansuBroker, TlsProxy], certs: Path
) -> None:
    broker, _ = tls_broker
    bus = KafkaBus(tls_config(broker.port, ssl_cafile=str(certs / "ca.pem"), request_timeout_ms=2000))
    with pytest.raises(
        BusUnavailableError, match=rf"the TLS handshake with 127\.0\.0\.1:{broker.port} (failed|did not)"
    ):
        await bus.start()
    await bus.aclose()


@pytest.mark.parametrize("key", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_a_missing_tls_file_is_a_config_error_naming_the_key_and_the_file(
    key: str, certs: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nowhere" / f"{key}.pem")
    files = {"ssl_cafile": str(certs / "ca.pem"), "ssl_certfile": str(certs / "server.pem"),
             "ssl_keyfile": str(certs / "server.key"), key: missing}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        client_options(tls_config(9092, **files))
    assert info.value.key == f"kafka.{key}"
    assert f"kafka.{key} names {missing!r}, which is not a file" in str(info.value)


def test_a_tls_file_that_is_not_pem_is_a_config_error(certs: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"kafka\.ssl_cafile: could not load .*junk\.pem as PEM") as info:
        client_options(tls_config(9092, ssl_cafile=str(junk)))
    assert info.value.key == "kafka.ssl_cafile"
    with pytest.raises(ConfigError, match=r"kafka\.ssl_certfile: could not load .*junk\.pem") as info:
        client_options(tls_config(9092, ssl_cafile=str(certs / "ca.pem"), ssl_certfile=str(junk)))
    assert info.value.key == "kafka.ssl_certfile"
    # The good files make a context that verifies the brokers.
    ctx = client_options(tls_config(9092, ssl_cafile=str(certs / "ca.pem")))["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
