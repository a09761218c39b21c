"""docker-compose.yml cannot run here (no Docker engine), so it is checked as data:
its shape against a schema of the Compose keys we use, and its agreement with Settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from askonce.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ASKONCE_SERVICES = {"gateway", "worker", "beat", "mllp"}

_STRING_LIST = {"type": "array", "items": {"type": "string"}}
_SERVICE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string"},
        "build": {"type": ["string", "object"]},
        "command": {"oneOf": [{"type": "string"}, _STRING_LIST]},
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "environment": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        "ports": _STRING_LIST,
        "profiles": _STRING_LIST,
        "volumes": _STRING_LIST,
        "depends_on": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "condition": {
                        "enum": [
                            "service_started",
                            "service_healthy",
                            "service_completed_successfully",
                        ]
                    }
                },
                "required": ["condition"],
            },
        },
        "healthcheck": {
            "type": "object",
            "additionalProperties": False,
            "required": ["test"],
            "properties": {
                "test": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "interval": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                "timeout": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                "start_period": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                "retries": {"type": "integer", "minimum": 1},
            },
        },
    },
}
COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services"],
    "patternProperties": {"^x-": {}},
    "properties": {
        "services": {"type": "object", "additionalProperties": _SERVICE},
        "volumes": {"type": "object"},
    },
    "additionalProperties": False,
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid() -> None:
    compose = _compose()
    jsonschema.validate(compose, COMPOSE_SCHEMA)
    assert {"postgres", "redis", *ASKONCE_SERVICES} <= set(compose["services"])


def test_every_service_has_a_healthcheck_and_waits_for_what_it_needs() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
    for name in ASKONCE_SERVICES:
        depends = services[name]["depends_on"]
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name
    assert set(services["gateway"]["depends_on"]) == {"postgres", "redis"}


def test_one_image_built_from_the_repo_dockerfile() -> None:
    services = _compose()["services"]
    images = {services[name]["image"] for name in ASKONCE_SERVICES}
    assert len(images) == 1
    assert all(services[name]["build"] == "." for name in ASKONCE_SERVICES)
    assert (ROOT / "Dockerfile").is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("askonce", "connectors", "fhir_mapping", "mpi", "store", "sync", "gateway"):
        assert f"COPY {package} " in dockerfile, package


def test_gateway_migrates_before_serving() -> None:
    command = " ".join(_compose()["services"]["gateway"]["command"])
    assert command.index("askonce db upgrade") < command.index("askonce serve")


def test_environment_names_are_real_settings() -> None:
    fields = {f"ASKONCE_{name.upper()}" for name in Settings.model_fields}
    services = _compose()["services"]
    for name in ASKONCE_SERVICES:
        env = services[name]["environment"]
        assert set(env) <= fields, set(env) - fields
        assert {"ASKONCE_DATABASE_URL", "ASKONCE_REDIS_URL", "ASKONCE_SECRET_KEY"} <= set(env)
        Settings(
            **{
                k.removeprefix("ASKONCE_").lower(): v
                for k, v in env.items()
                if not str(v).startswith("${")
            }
        )


def test_urls_point_at_the_compose_services() -> None:
    services = _compose()["services"]
    env = services["worker"]["environment"]
    pg = services["postgres"]["environment"]
    url = env["ASKONCE_DATABASE_URL"]
    match = re.fullmatch(r"postgresql\+psycopg://(\w+):(\w+)@postgres:5432/(\w+)", url)
    assert match and match.groups() == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert env["ASKONCE_REDIS_URL"].startswith("redis://redis:6379/")
    assert Settings(database_url=url).is_postgres


def test_mllp_listener_is_an_opt_in_profile_on_the_default_port() -> None:
    mllp = _compose()["services"]["mllp"]
    assert mllp["command"] == ["askonce", "mllp"]
    assert mllp["profiles"] == ["hl7v2"]
    assert mllp["ports"] == ["2575:2575"]
    assert mllp["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    # Healthy when its ports accept connections, not only when the database answers.
    assert mllp["healthcheck"]["test"][:4] == ["CMD", "askonce", "check", "--mllp"]
