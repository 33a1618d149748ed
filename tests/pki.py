"""A throwaway PKI for the TLS tests (a CA, a server and a client certificate,
made with ``cryptography``) and the TLS-capable server binary to test with.

Shared by test_tls.py and test_cluster_tls.py. Importing it needs
``cryptography``: test modules skip first with ``pytest.importorskip``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
