"""The steward console: server-rendered pages for the people who decide matches."""

from gateway.console.routes import install

__all__ = ["install"]
