"""Throwaway certificates for MLLP over TLS: a CA, and the certificates it signs.

For the tests and ``bench.mllp --tls`` only; a real listener presents a certificate its
hospital's PKI issued. EC P-256 keys (fast to make), SHA-256 signatures, and the
extensions a strict verifier asks for (basic constraints, key identifiers, a CA's key
usage).
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Key = ec.EllipticCurvePrivateKey

_NO_USAGE = dict.fromkeys(
    (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "encipher_only",
        "decipher_only",
    ),
    False,
)


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate(
    subject: str,
    key: Key,
    issuer: tuple[str, Key] | None = None,
    *,
    ip: str | None = None,
    days: float = 365,
) -> x509.Certificate:
    """A certificate for ``key``: a CA's (self-signed) without ``issuer``, else one
    ``issuer`` (its name and key) signs for an end entity, with ``ip`` as its subject
    alternative name. It expires in ``days`` (already expired when negative)."""
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(key_cert_sign=True, crl_sign=True, **_NO_USAGE), critical=True
        )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def write_pem(folder: Path, name: str, cert: x509.Certificate, key: Key | None = None) -> Path:
    """``name.pem`` (the certificate) and, with ``key``, ``name.key`` (PKCS#8, unencrypted)."""
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def loopback_listener(folder: Path) -> tuple[Path, Path, Path]:
    """A CA (``ca.pem``) and a listener's certificate for 127.0.0.1 it signed
    (``listener.pem``, ``listener.key``): the three paths."""
    ca_key, listener_key = new_key(), new_key()
    ca = write_pem(folder, "ca", certificate("askonce test CA", ca_key))
    signed = certificate("mllp listener", listener_key, ("askonce test CA", ca_key), ip="127.0.0.1")
    listener = write_pem(folder, "listener", signed, listener_key)
    return ca, listener, folder / "listener.key"
