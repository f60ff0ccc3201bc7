"""Advantage Weighted Matching (AWM) trainer for SD3/SD3.5 with LoRA.

Entry point: :func:`trainers.awm.recipe.train` (see ``README.md`` in this folder). Importing the
package is cheap: torch / diffusers are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:  # lazy: keep `import trainers.awm` free of torch
    if name in ("train", "TrainResult"):
        from trainers.awm import recipe

        return getattr(recipe, name)
    raise AttributeError(name)
