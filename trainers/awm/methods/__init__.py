"""Training methods on one shared trainer loop (see ``base.py`` for the seam).

``build_method(cfg)`` returns the strategy object for ``cfg.method``. Which config keys each
method reads and its defaults for shared keys live in ``trainers/awm/config.py``
(``METHOD_ONLY_KEYS``, ``METHOD_DEFAULTS``): the config is validated without importing torch.
"""

from __future__ import annotations

from typing import Any

from trainers.awm.methods.advantageflow import AdvantageFlowMethod
from trainers.awm.methods.awm import AWMMethod
from trainers.awm.methods.base import Method, RolloutChunk
from trainers.awm.methods.flow_grpo import FlowGRPOMethod
from trainers.awm.methods.nft import NFTMethod

__all__ = ["Method", "RolloutChunk", "build_method"]

_BUILDERS: dict[str, Any] = {"awm": AWMMethod, "flow_grpo": FlowGRPOMethod, "diffusionnft": NFTMethod,
                             "advantageflow": AdvantageFlowMethod}


def build_method(cfg: Any) -> Method:
    """The strategy object for ``cfg.method`` (a name the config's ``MethodName`` accepted)."""
    return _BUILDERS[cfg.method](cfg)
