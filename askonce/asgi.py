"""ASGI entry point for servers that start their own worker processes.

``askonce serve --workers N`` (or ``uvicorn --factory askonce.asgi:create_app``)
builds one app per process from the environment's settings.
"""

from __future__ import annotations

from fastapi import FastAPI

from askonce.logging import configure_logging
from askonce.runtime import build_runtime
from askonce.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    settings.require_real_secrets()
    return build_runtime(settings).create_app()
