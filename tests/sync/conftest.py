"""Fixtures of the delivery tests (an ``httpx.MockTransport`` endpoint that records what it
was sent, :class:`tests.sync.helpers.Endpoint`, and a client that sends to it) and of the
MLLP-over-TLS tests (a throwaway PKI)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.sync.helpers import Endpoint
from tools.pki import certificate, new_key, write_pem


@pytest.fixture
def endpoint() -> Endpoint:
    return Endpoint()


@pytest.fixture
def http(endpoint: Endpoint) -> Iterator[httpx.Client]:
    with endpoint.client() as client:
        yield client


@dataclass(frozen=True)
class Pki:
    """A CA, the listener's certificate, a client's, and a client of another CA."""

    folder: Path

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def client(self, name: str | None) -> ssl.SSLContext:
        """A client that trusts the CA and presents ``name``'s certificate (or none)."""
        context = ssl.create_default_context(cafile=self.path("ca.pem"))
        if name is not None:
            context.load_cert_chain(self.path(f"{name}.pem"), self.path(f"{name}.key"))
        return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key, listener_key = new_key(), new_key(), new_key()
    ca, other = ("askonce test CA", ca_key), ("another CA", other_key)
    write_pem(folder, "ca", certificate(ca[0], ca_key))
    write_pem(folder, "other-ca", certificate(other[0], other_key))
    for name, days in (("listener", 365), ("expiring", 10), ("expired", -1)):
        mine = certificate(name, listener_key, ca, ip="127.0.0.1", days=days)
        write_pem(folder, name, mine, listener_key)
    for name, issuer in (("engine", ca), ("stranger", other)):
        key = new_key()
        write_pem(folder, name, certificate(name, key, issuer), key)
    (folder / "garbage.pem").write_text("not a certificate\n")
    return Pki(folder)
