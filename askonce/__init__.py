"""askonce: FHIR interoperability middleware with one golden Patient record per person.

This package is the composition root: settings, the CLI, the wiring and the demo data.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
