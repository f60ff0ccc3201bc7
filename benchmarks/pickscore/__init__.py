"""PickScore benchmark. The package holds the version only; the scorer is
``benchmarks.pickscore.benchmark`` (``make_benchmark``), the caption filter ``benchmarks.pickscore.nsfw``."""

from __future__ import annotations

#: bump whenever scoring semantics change (the model is reported as the engine)
VERSION = "pickscore-1.0"

