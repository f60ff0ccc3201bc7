"""The two EMAs of AWM (spec sections 1.9, 2.6, trap 9.18).

1. :class:`WeightEMA` -- a weight EMA of the trainable (LoRA) parameters used only for
   evaluation and for saving ``lora_ema`` (upstream ``flow_grpo/ema.py`` ``EMAModuleWrapper``).
2. The KL-EMA adapter update ``ema <- d*ema + (1-d)*theta`` with the mixing coefficient
   :func:`kl_ema_mixing` (``train_sd3_awm.py`` L1409-1419).

Both are factor-wise on LoRA A and B (EMA(B)EMA(A) != EMA(BA)), exactly as upstream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["WeightEMA", "kl_ema_mixing", "update_ema_adapter_", "weight_ema_decay"]


def weight_ema_decay(step: int, max_decay: float) -> float:
    """``min((1 + step) / (10 + step), max_decay)`` (``EMAModuleWrapper.get_current_decay``)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min((1 + step) / (10 + step), max_decay)


def _named(params: Mapping[str, Tensor] | Iterable[Any]) -> list[tuple[str, Tensor]]:
    """Normalise a mapping, an iterable of (name, tensor) pairs or an iterable of tensors."""
    if isinstance(params, Mapping):
        return [(str(k), v) for k, v in params.items()]
    items = list(params)
    if all(isinstance(p, Tensor) for p in items):
        return [(str(i), p) for i, p in enumerate(items)]
    if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], Tensor) for p in items):
        return [(str(n), p) for n, p in items]
    raise TypeError("params must be a mapping name->Tensor, (name, Tensor) pairs, or Tensors")


class WeightEMA:
    """fp32 shadow copies of named parameters; ``e <- e + (1 - decay)(p - e)``.

    Semantics (upstream ``EMAModuleWrapper``, spec 1.9):
      * ``decay = weight_ema_decay(step, max_decay)`` where ``step`` is the *optimizer step count
        after the step just taken* (upstream calls ``ema.step(params, global_step)`` once per
        epoch after ``global_step += 1``, so the first update uses step 1, decay 2/11);
      * the update only happens when ``(step + 1) % update_interval == 0``;
      * the shadow is initialised as a copy of the parameters at construction.
    Upstream skips parameters with ``requires_grad=False``; here every parameter handed in is
    updated (the caller passes the trainable ones). Parameters are matched by name (mapping or
    ``named_parameters()`` pairs) or by position (plain tensors).
    """

    def __init__(
        self,
        params: Mapping[str, Tensor] | Iterable[Any],
        *,
        max_decay: float = 0.99,
        update_interval: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0.0 <= max_decay <= 1.0:
            raise ValueError(f"max_decay must be in [0, 1], got {max_decay}")
        if update_interval < 1:
            raise ValueError(f"update_interval must be >= 1, got {update_interval}")
        named = _named(params)
        if not named:
            raise ValueError("WeightEMA needs at least one parameter")
        names = [n for n, _ in named]
        if len(set(names)) != len(names):
            raise ValueError("duplicate parameter names")
        self.max_decay = float(max_decay)
        self.update_interval = int(update_interval)
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            n: p.detach().to(
                device=device if device is not None else p.device, dtype=torch.float32, copy=True
            )
            for n, p in named
        }

    @property
    def names(self) -> list[str]:
        return list(self.shadow)

    def _match(self, params: Mapping[str, Tensor] | Iterable[Any]) -> list[tuple[Tensor, Tensor]]:
        named = _named(params)
        if len(named) != len(self.shadow):
            raise ValueError(f"expected {len(self.shadow)} parameters, got {len(named)}")
        if isinstance(params, Mapping) or not all(n.isdigit() for n, _ in named):
            missing = [n for n, _ in named if n not in self.shadow]
            if missing:
                raise KeyError(f"parameters not tracked by this WeightEMA: {missing[:5]}")
            pairs = [(self.shadow[n], p) for n, p in named]
        else:
            pairs = list(zip(self.shadow.values(), (p for _, p in named), strict=True))
        for e, p in pairs:
            if e.shape != p.shape:
                raise ValueError(f"shape mismatch: EMA {tuple(e.shape)} vs parameter {tuple(p.shape)}")
        return pairs

    @torch.no_grad()
    def update(self, params: Mapping[str, Tensor] | Iterable[Any], step: int) -> float | None:
        """Apply one EMA update at optimizer step ``step``; returns the decay used, or None when
        skipped by ``update_interval``."""
        pairs = self._match(params)
        if (step + 1) % self.update_interval != 0:
            return None
        decay = weight_ema_decay(step, self.max_decay)
        one_minus_decay = 1 - decay
        for e, p in pairs:
            # same expression as upstream: e.add_((1 - d) * (p - e))
            e.add_(one_minus_decay * (p.detach().to(device=e.device, dtype=e.dtype) - e))
        self.num_updates += 1
        return decay

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, Tensor] | Iterable[Any]) -> None:
        """Write the EMA weights into ``params`` in place (cast to each parameter's dtype)."""
        for e, p in self._match(params):
            p.data.copy_(e.to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, params: Mapping[str, Tensor] | Iterable[Any]) -> Iterator[None]:
        """Temporarily put the EMA weights into ``params`` (eval); the live values are restored
        bit-exactly on exit, also on exceptions."""
        pairs = self._match(params)
        backup = [p.detach().clone() for _, p in pairs]
        try:
            self.copy_to(params)
            yield
        finally:
            with torch.no_grad():
                for (_, p), b in zip(pairs, backup, strict=True):
                    p.data.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """Exact state (cloned fp32 tensors on CPU + counters) for bitwise resume."""
        return {
            "shadow": {n: e.detach().cpu().clone() for n, e in self.shadow.items()},
            "max_decay": self.max_decay,
            "update_interval": self.update_interval,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; names and shapes must match the tracked parameters."""
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            extra = sorted(set(shadow) - set(self.shadow))[:5]
            missing = sorted(set(self.shadow) - set(shadow))[:5]
            raise KeyError(f"WeightEMA state mismatch: unexpected {extra}, missing {missing}")
        for n, e in self.shadow.items():
            src = shadow[n]
            if src.shape != e.shape:
                raise ValueError(f"WeightEMA state {n!r}: shape {tuple(src.shape)} != {tuple(e.shape)}")
            if src.dtype != torch.float32:
                raise ValueError(f"WeightEMA state {n!r}: dtype {src.dtype}, expected torch.float32")
        for n, e in self.shadow.items():
            e.copy_(shadow[n].to(e.device))
        self.max_decay = float(state["max_decay"])
        self.update_interval = int(state["update_interval"])
        self.num_updates = int(state["num_updates"])


def kl_ema_mixing(global_step: int, kl_ema_decay: float, decay_type: Literal["linear", "constant"]) -> float:
    """KL-EMA adapter mixing coefficient d (L1409-1414).

    ``constant``: ``kl_ema_decay``; ``linear``: ``min(kl_ema_decay, 0.001 * global_step)`` with
    ``global_step`` the optimizer-step count after the step just taken (ramps 0.001, 0.002, ...).
    """
    if not 0.0 <= kl_ema_decay <= 1.0:
        raise ValueError(f"kl_ema_decay must be in [0, 1], got {kl_ema_decay}")
    if global_step < 0:
        raise ValueError(f"global_step must be >= 0, got {global_step}")
    if decay_type == "constant":
        return float(kl_ema_decay)
    if decay_type == "linear":
        return min(kl_ema_decay, 0.001 * global_step)
    raise ValueError(f"unknown kl_ema_decay_type {decay_type!r}; expected 'linear' or 'constant'")


@torch.no_grad()
def update_ema_adapter_(ema_params: list[Tensor], policy_params: list[Tensor], d: float) -> None:
    """In place ``ema <- d * ema + (1 - d) * theta`` per tensor (LoRA factor-wise), same expression
    order as upstream (``tgt * decay + src * (1 - decay)``)."""
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"mixing coefficient d must be in [0, 1], got {d}")
    ema_params, policy_params = list(ema_params), list(policy_params)
    if len(ema_params) != len(policy_params):
        raise ValueError(f"{len(ema_params)} EMA-adapter tensors vs {len(policy_params)} policy tensors")
    for e, p in zip(ema_params, policy_params, strict=True):
        if e.shape != p.shape:
            raise ValueError(f"shape mismatch: EMA adapter {tuple(e.shape)} vs policy {tuple(p.shape)}")
    for e, p in zip(ema_params, policy_params, strict=True):
        e.data.copy_(e.detach() * d + p.detach().to(device=e.device, dtype=e.dtype) * (1.0 - d))
