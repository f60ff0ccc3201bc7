"""LoRA adapters on the transformer: the policy ("default"), the KL-EMA adapter ("ema"),
reference predictions with adapters disabled, and export in diffusers and PEFT formats.

* Adapters are injected with diffusers' ``add_adapter`` (PEFT under the hood) so the model stays
  a plain ``SD3Transformer2DModel`` (works inside the pipeline, with ``save_lora_weights`` and
  with DDP).
* ``"ema"`` is added right after ``"default"`` and initialised as an exact copy of it (upstream
  L649-659); only ``"default"`` is trainable.
* Diffusers export writes ``pytorch_lora_weights.safetensors`` WITH the adapter metadata, so
  ``lora_alpha`` survives a round trip (stack-notes P4: without it diffusers reloads alpha=r).
* PEFT export writes ``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's key
  layout (``base_model.model.<module>.lora_A.weight``), loadable by ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

POLICY = "default"
EMA = "ema"
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."

_INIT = {"gaussian": "gaussian", "default": True}


def make_lora_config(*, rank: int, alpha: float, init: str, target_modules: list[str]):
    try:
        init_w = _INIT[init]
    except KeyError:
        raise ValueError(f"unknown lora.init {init!r}; expected one of {sorted(_INIT)}") from None
    return LoraConfig(r=int(rank), lora_alpha=alpha, init_lora_weights=init_w, target_modules=list(target_modules))


def add_policy_adapters(transformer, lora_config, *, with_ema: bool = True) -> None:
    """Freeze the base, add the trainable "default" adapter and (optionally) the "ema" copy.

    PEFT's Gaussian init sets B = 0, so the initial LoRA delta is exactly zero. The adapters are fp32
    whatever the base weights are stored in (PEFT creates them in the base layer's dtype; a bf16 base,
    ``pretrained.transformer_dtype``, would otherwise train bf16 LoRA weights with a bf16 AdamW state).
    """
    transformer.requires_grad_(False)
    transformer.add_adapter(copy.deepcopy(lora_config), adapter_name=POLICY)
    if not _matched_any(transformer):
        raise ValueError(f"LoRA target_modules {sorted(lora_config.target_modules)} matched no module of the transformer")
    _adapters_to_fp32(transformer)
    if with_ema:
        with warnings.catch_warnings():  # PEFT warns about a second adapter; two are intended here
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config`.*")
            transformer.add_adapter(copy.deepcopy(lora_config), adapter_name=EMA)
        _adapters_to_fp32(transformer)
        copy_adapter_(transformer, src=POLICY, dst=EMA)
    transformer.set_adapter(POLICY)


def _adapters_to_fp32(transformer) -> None:
    with torch.no_grad():
        for n, p in transformer.named_parameters():
            if "lora_" in n and p.dtype != torch.float32:
                p.data = p.data.float()


def _matched_any(transformer) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in transformer.modules())


def adapter_params(transformer, adapter: str) -> dict[str, torch.nn.Parameter]:
    """LoRA parameters of one adapter by full parameter name (deterministic order)."""
    tag = f".{adapter}."
    out = {n: p for n, p in transformer.named_parameters() if "lora_" in n and tag in n}
    if not out:
        raise KeyError(f"no LoRA parameters for adapter {adapter!r}")
    return out


def _pair_names(name: str, src: str, dst: str) -> str:
    return name.replace(f".{src}.", f".{dst}.")


@contextlib.contextmanager
def _no_grad():
    with torch.no_grad():
        yield


def copy_adapter_(transformer, *, src: str, dst: str) -> None:
    s = adapter_params(transformer, src)
    d = adapter_params(transformer, dst)
    with _no_grad():
        for n, p in s.items():
            d[_pair_names(n, src, dst)].data.copy_(p.data)


def paired_params(transformer, a: str, b: str) -> tuple[list, list]:
    """Parameters of adapters ``a`` and ``b`` in matching order."""
    pa = adapter_params(transformer, a)
    pb = adapter_params(transformer, b)
    return list(pa.values()), [pb[_pair_names(n, a, b)] for n in pa]


@contextlib.contextmanager
def adapters_disabled(transformer) -> Iterator[None]:
    """Reference model = base weights (no second copy). Restores the adapters even on error."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


@contextlib.contextmanager
def using_adapter(transformer, adapter: str, *, restore: str = POLICY) -> Iterator[None]:
    """Temporarily make ``adapter`` the active one (PEFT flips requires_grad; restored on exit)."""
    transformer.set_adapter(adapter)
    try:
        yield
    finally:
        transformer.set_adapter(restore)


def peft_state_dict(transformer, adapter: str = POLICY) -> dict[str, torch.Tensor]:
    """Adapter weights with the adapter name stripped (``...to_q.lora_A.weight``), cloned to CPU."""
    sd = get_peft_model_state_dict(transformer, adapter_name=adapter)
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items()}


def adapter_metadata(transformer, adapter: str = POLICY) -> dict[str, Any]:
    return transformer.peft_config[adapter].to_dict()


# ---------------------------------------------------------------------- export
def save_diffusers(out_dir: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, Any],
                   pipeline_cls=None) -> Path:
    """``pytorch_lora_weights.safetensors`` in diffusers' SD3 format (``transformer.`` prefix) with
    the adapter metadata; loadable by ``pipe.load_lora_weights(out_dir)``."""
    if pipeline_cls is None:
        pipeline_cls = StableDiffusion3Pipeline
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_cls.save_lora_weights(
        str(out), transformer_lora_layers=dict(state_dict),
        transformer_lora_adapter_metadata=_jsonable(metadata), safe_serialization=True,
    )
    return out / DIFFUSERS_WEIGHT_NAME


def save_peft(out_dir: str | Path, state_dict: Mapping[str, torch.Tensor], lora_config,
              *, base_model_name_or_path: str | None = None) -> Path:
    """PEFT ``save_pretrained`` layout: ``adapter_config.json`` + ``adapter_model.safetensors``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = copy.deepcopy(lora_config)
    conf.inference_mode = True
    conf.base_model_name_or_path = base_model_name_or_path
    conf.save_pretrained(str(out))
    tensors = {_PEFT_PREFIX + k: v.contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / PEFT_WEIGHT_NAME), metadata={"format": "pt"})
    return out / PEFT_WEIGHT_NAME


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, set):
        return sorted(d)
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    return d


# ---------------------------------------------------------------------- import
def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a LoRA from a diffusers file/folder, a PEFT folder, or an AWM checkpoint folder.

    Returns (state dict with keys ``<module>.lora_A.weight``, LoRA config dict or None).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        for cand in (p / "lora" / DIFFUSERS_WEIGHT_NAME, p / DIFFUSERS_WEIGHT_NAME, p / PEFT_WEIGHT_NAME,
                     p / "lora_peft" / PEFT_WEIGHT_NAME):
            if cand.is_file():
                p = cand
                break
        else:
            raise FileNotFoundError(f"no LoRA weights ({DIFFUSERS_WEIGHT_NAME} or {PEFT_WEIGHT_NAME}) under {path}")
    if not p.is_file():
        raise FileNotFoundError(f"LoRA file not found: {p}")
    sd = load_file(str(p))
    meta: dict[str, Any] | None = None
    if p.name == PEFT_WEIGHT_NAME and (p.parent / PEFT_CONFIG_NAME).is_file():
        meta = json.loads((p.parent / PEFT_CONFIG_NAME).read_text())
    else:
        with safe_open(str(p), framework="pt") as f:
            md = f.metadata() or {}
        raw = md.get("lora_adapter_metadata")
        if raw:
            allm = json.loads(raw)
            meta = {k.removeprefix("transformer."): v for k, v in allm.items() if k.startswith("transformer.")} or None
    out = {}
    for k, v in sd.items():
        for pre in (_PEFT_PREFIX, "transformer."):
            if k.startswith(pre):
                k = k[len(pre):]
                break
        out[k] = v
    return out, meta


def load_into_adapter_(transformer, path: str | Path, adapter: str = POLICY) -> None:
    """Copy a saved LoRA into an existing adapter in place (``train.lora_path``). Ranks must match."""
    sd, meta = read_lora_file(path)
    conf = transformer.peft_config[adapter]
    if meta is not None:
        for key in ("r", "lora_alpha"):
            if key in meta and float(meta[key]) != float(getattr(conf, key)):
                raise ValueError(f"LoRA at {path}: {key}={meta[key]} but the configured adapter has "
                                 f"{key}={getattr(conf, key)}; set lora.rank / lora.alpha to match")
    params = adapter_params(transformer, adapter)
    by_key = {n.replace(f".{adapter}.", "."): p for n, p in params.items()}
    missing = sorted(set(by_key) - set(sd))
    unexpected = sorted(set(sd) - set(by_key))
    if missing or unexpected:
        raise ValueError(f"LoRA at {path} does not match the configured targets: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]} (check lora.type / lora.target_modules / include_attn2)")
    with _no_grad():
        for k, p in by_key.items():
            if tuple(sd[k].shape) != tuple(p.shape):
                raise ValueError(f"LoRA at {path}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(p.shape)}")
            p.data.copy_(sd[k].to(p.dtype))


_STEP_DIR_RE = re.compile(r"^(?:checkpoint|step)-(\d+)$")


def trained_step_of(path: str | Path) -> int | None:
    """The global step a saved LoRA was trained for, or None when the path does not say.

    Looks (from the path upwards, at most 3 levels) for our checkpoint's ``manifest.json`` (``"step"``),
    then for a ``step-<N>`` folder (ours) or upstream's ``checkpoint-<S>`` folder (upstream parses
    ``checkpoint-S/lora_non_ema`` the same way, L834-841).
    """
    p = Path(path).expanduser()
    levels = ([p] if p.is_dir() else []) + list(p.parents)[:3]
    for d in levels:
        manifest = d / "manifest.json"
        if manifest.is_file():
            try:
                return int(json.loads(manifest.read_text())["step"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # not our manifest: fall back to the folder name
    for d in levels:
        m = _STEP_DIR_RE.match(d.name)
        if m:
            return int(m.group(1))
    return None
