"""The admin API (``/admin``): sources, sync runs, quarantine, review queue, links,
consumers and the crosswalk. Every route needs the ``askonce.admin`` scope."""

from __future__ import annotations

from gateway.admin.routes import router

__all__ = ["router"]
