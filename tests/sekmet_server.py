"""Pytest plugin: real sekmet-fhir servers for integration tests.

sekmet-fhir (https://pypi.org/project/sekmet-fhir/) is an independent FHIR R4 server
that we did not write. The Makefile installs it in its own virtualenv
(``.venv-sekmet``) and exports ``ASKONCE_SEKMET`` with the path of its ``sekmet``
command. Each server started here gets a free 127.0.0.1 port, its own temporary
directory (``SEKMET_DB``, bulk files, keys) and ``SEKMET_BASE_URL`` so that the
links it writes (``Bundle.link``, ``Content-Location``) point at that port.

Fixtures:

* ``sekmet_server`` (session scope): one open server (no auth) shared by tests.
  Tests that need exact counts create resources with a unique tag or family name,
  or start their own server through the factory.
* ``sekmet_factory`` (session scope): ``sekmet_factory(config=None)`` starts one
  more independent server; ``config`` is merged into sekmet's ``settings.yaml``
  (e.g. ``{"server_auth": {"types": ["smart"], "smart_clients": [...]}}``).
  Every server is stopped at the end of the session.

When inbound auth is switched on, the factory also registers a random static bearer
token so the seeding helpers (``create``, ``update``, ``delete``, ``seed``) keep working.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import service_unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEKMET = REPO_ROOT / ".venv-sekmet" / "bin" / "sekmet"
#: How long a server may take to answer ``/fhir/metadata`` after start.
STARTUP_TIMEOUT_S = 60.0
STARTUP_POLL_S = 0.1
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
#: Resources per transaction Bundle when seeding.
SEED_BATCH_SIZE = 500
HOST = "127.0.0.1"

JsonDict = dict[str, Any]


def sekmet_executable() -> Path:
    """``$ASKONCE_SEKMET`` or the repo's ``.venv-sekmet/bin/sekmet``."""
    configured = os.environ.get("ASKONCE_SEKMET")
    return Path(configured) if configured else DEFAULT_SEKMET


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _merge(base: JsonDict, extra: JsonDict) -> JsonDict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class SekmetServer:
    """A running sekmet-fhir process and helpers to seed it over its FHIR API.

    ``base_url`` is the FHIR base (``http://127.0.0.1:PORT/fhir``); ``root_url`` is the
    server root, where ``/auth/token`` and ``/.well-known/smart-configuration`` live.
    """

    def __init__(self, executable: Path, workdir: Path, config: JsonDict | None = None) -> None:
        self.port = free_port()
        self.root_url = f"http://{HOST}:{self.port}"
        self.base_url = f"{self.root_url}/fhir"
        self.workdir = workdir
        self.admin_token: str | None = None
        settings: JsonDict = {
            "data_dir": str(workdir / "data"),
            "own_private_key_path": str(workdir / "keys" / "sekmet_private.pem"),
            "log_inbound": False,
            # No simulated downstream actors; bulk jobs stay "in progress" only briefly.
            "simulator": {"enabled": False, "delay_seconds": 0.5},
        }
        settings = _merge(settings, config or {})
        auth = settings.get("server_auth") or {}
        if auth.get("types") and "none" not in auth["types"]:
            self.admin_token = secrets.token_urlsafe(24)
            auth = {**auth, "types": sorted({*auth["types"], "bearer"})}
            auth["tokens"] = [*auth.get("tokens", []), self.admin_token]
            settings["server_auth"] = auth
        self.settings = settings
        self.executable = executable
        (workdir / "settings.yaml").write_text(yaml.safe_dump(settings))
        self._start()

    def _start(self) -> None:
        env = {
            **os.environ,
            "SEKMET_CONFIG": str(self.workdir / "settings.yaml"),
            "SEKMET_BASE_URL": self.base_url,
            "SEKMET_DB": str(self.workdir / "sekmet.db"),
        }
        self._log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.executable), "serve", "--host", HOST, "--port", str(self.port)],
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        self.client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=REQUEST_TIMEOUT_S
        )
        self._wait_ready()

    def restart(self) -> None:
        """Start the server again after :meth:`stop`: same port, same data (an EHR back
        from an outage)."""
        self._start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(STARTUP_POLL_S)
        self.stop()
        log = (self.workdir / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"sekmet-fhir did not start on port {self.port}:\n{log}")

    # ----- seeding over the FHIR API -----

    def create(self, resource: JsonDict) -> JsonDict:
        """POST one resource; returns it as stored (with id and meta)."""
        response = self.client.post(f"/{resource['resourceType']}", json=resource)
        response.raise_for_status()
        return dict(response.json())

    def update(self, resource: JsonDict) -> JsonDict:
        """PUT one resource (must carry its id); returns the new version."""
        response = self.client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
        response.raise_for_status()
        return dict(response.json())

    def delete(self, resource_type: str, resource_id: str) -> None:
        self.client.delete(f"/{resource_type}/{resource_id}").raise_for_status()

    def read(self, resource_type: str, resource_id: str) -> JsonDict:
        response = self.client.get(f"/{resource_type}/{resource_id}")
        response.raise_for_status()
        return dict(response.json())

    def seed(
        self, resources: list[JsonDict], *, batch_size: int = SEED_BATCH_SIZE
    ) -> list[JsonDict]:
        """Create many resources with transaction Bundles; returns them as stored, in order.

        A resource may reference an earlier one in the same call through its
        ``fullUrl`` (``urn:uuid:...``): give it a ``"fullUrl"`` key at top level,
        which is moved onto the Bundle entry.
        """
        stored: list[JsonDict] = []
        for start in range(0, len(resources), batch_size):
            entries = []
            for resource in resources[start : start + batch_size]:
                body = dict(resource)
                full_url = body.pop("fullUrl", None) or f"urn:uuid:{uuid.uuid4()}"
                entries.append(
                    {
                        "fullUrl": full_url,
                        "resource": body,
                        "request": {"method": "POST", "url": body["resourceType"]},
                    }
                )
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            response = self.client.post(
                "", json=bundle, headers={"Prefer": "return=representation"}
            )
            response.raise_for_status()
            for entry in response.json().get("entry", []):
                if "resource" in entry:
                    stored.append(entry["resource"])
                else:
                    location = entry["response"]["location"].split("/_history")[0]
                    rtype, rid = location.rsplit("/", 2)[-2:]
                    stored.append(self.read(rtype, rid))
        return stored

    def seed_patients(
        self, count: int, *, family: str | None = None, encounters_per_patient: int = 0
    ) -> tuple[list[JsonDict], list[JsonDict]]:
        """Create ``count`` synthetic Patients (family name ``family`` or a random one),
        each with ``encounters_per_patient`` Encounters; returns (patients, encounters)."""
        family = family or f"Test{uuid.uuid4().hex[:10]}"
        resources: list[JsonDict] = []
        for index in range(count):
            full_url = f"urn:uuid:{uuid.uuid4()}"
            resources.append(synthetic_patient(index, family, full_url))
            for number in range(encounters_per_patient):
                resources.append(synthetic_encounter(full_url, number))
        stored = self.seed(resources)
        patients = [r for r in stored if r["resourceType"] == "Patient"]
        encounters = [r for r in stored if r["resourceType"] == "Encounter"]
        return patients, encounters

    def stop(self) -> None:
        """Terminate this server's process (only the one started here)."""
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self._log.close()


def synthetic_patient(index: int, family: str, full_url: str | None = None) -> JsonDict:
    """A made-up, valid R4 Patient (no real person)."""
    patient: JsonDict = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.3.4.5.1", "value": f"MRN{uuid.uuid4().hex[:12]}"}],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [f"Given{index}"]}],
        "gender": "female" if index % 2 else "male",
        "birthDate": f"{1940 + index % 60}-{1 + index % 12:02d}-{1 + index % 28:02d}",
    }
    if full_url:
        patient["fullUrl"] = full_url
    return patient


def synthetic_encounter(patient_reference: str, number: int) -> JsonDict:
    """A finished ambulatory Encounter for the given Patient reference."""
    day = 1 + number % 28
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
        },
        "subject": {"reference": patient_reference},
        "period": {"start": f"2024-01-{day:02d}T09:00:00Z", "end": f"2024-01-{day:02d}T10:00:00Z"},
    }


SekmetFactory = Callable[..., SekmetServer]


@pytest.fixture(scope="session")
def sekmet_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetFactory]:
    """Start independent sekmet-fhir servers: ``sekmet_factory(config=None)``."""
    executable = sekmet_executable()
    servers: list[SekmetServer] = []

    def start(config: JsonDict | None = None) -> SekmetServer:
        if not executable.is_file() or not os.access(executable, os.X_OK):
            service_unavailable(
                "sekmet-fhir", f"no executable at {executable} (run `make install`)"
            )
        try:
            server = SekmetServer(executable, tmp_path_factory.mktemp("sekmet"), config)
        except (OSError, RuntimeError) as exc:
            service_unavailable("sekmet-fhir", exc)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def sekmet_server(sekmet_factory: SekmetFactory) -> SekmetServer:
    """One shared, open (no auth) sekmet-fhir server for the whole session."""
    return sekmet_factory()
