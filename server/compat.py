"""Where the server gets the catalog from: `vectors.catalog` when present, else the local stand-in."""

from __future__ import annotations

try:
    from vectors.catalog import Catalog, model_info_from_config
except ImportError:  # vectors.catalog not written yet
    from server.catalog_fallback import Catalog, model_info_from_config

__all__ = ["Catalog", "model_info_from_config"]
