"""PickScore benchmark (Flow-GRPO / AWM ``flow_grpo/pickscore_scorer.py`` semantics).

* processor: ``AutoProcessor.from_pretrained(processor_path)`` (default
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), text truncated at 77 tokens;
* model: ``CLIPModel.from_pretrained(model_path)`` (default ``yuvalkirstain/PickScore_v1``);
* ``score_i = logit_scale.exp() * cos(text_i, image_i)`` (per-pair diagonal) = the reported
  metric ("raw" PickScore, e.g. 21.72 / 23.31 in the papers);
* training reward = score / 26 (not clamped).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoProcessor, CLIPModel

from benchmarks.base import (
    Benchmark,
    ModelStatus,
    PromptSet,
    to_rgb,
    validate_batch,
)
from benchmarks.errors import BenchmarkError, ModelUnavailableError
from benchmarks.pickscore import VERSION
from benchmarks.pickscore.nsfw import is_nsfw

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPT_SETS = {
    "test": ("test.txt", "d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262"),
    "train": ("train.txt", "2f425adcbb9a6d0feee7c6c448e1cb83a1f71deca9434b803907e2578eca837f"),
}

DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
REWARD_SCALE = 26.0
MAX_TEXT_TOKENS = 77
_DTYPES = ("float32", "float16", "bfloat16")


def _how_to_provide(key: str, ident: str) -> str:
    default = DEFAULT_MODEL if key == "model_path" else DEFAULT_PROCESSOR
    return (
        f"set reward_kwargs.pickscore.{key} (or `awm bench score pickscore --opt {key}=DIR`) to a local "
        f"directory with the weights (HF format, save_pretrained layout), or pre-download {default!r} into "
        f"HF_HOME (currently {os.environ.get('HF_HOME', '~/.cache/huggingface')}) on a machine with network access"
    )


def _status_of(ident: str, key: str, files: tuple[str, ...]) -> ModelStatus:
    """Cheap check: local dir with the files, or the hub id present in the local HF cache."""
    p = Path(ident).expanduser()
    if p.exists() or ident.startswith(("/", "./", "../", "~")):
        if not p.is_dir():
            return ModelStatus(False, f"{key}={ident}: directory not found; {_how_to_provide(key, ident)}")
        missing = [f for f in files if not any((p / alt).exists() for alt in f.split("|"))]
        if key == "model_path" and not (any(p.glob("*.safetensors")) or any(p.glob("*.bin"))):
            missing.append("*.safetensors or *.bin weights")
        if missing:
            return ModelStatus(False, f"{key}={ident}: missing {missing}; {_how_to_provide(key, ident)}")
        return ModelStatus(True, f"{key}={p}")
    try:
        hit = try_to_load_from_cache(ident, files[0].split("|")[0])
    except Exception as e:  # noqa: BLE001  # pragma: no cover - odd ids
        return ModelStatus(False, f"{key}={ident}: cannot check HF cache ({e}); {_how_to_provide(key, ident)}")
    if isinstance(hit, str):
        return ModelStatus(True, f"{key}={ident} (HF cache)")
    return ModelStatus(False, f"{key}={ident}: not in the local HF cache; {_how_to_provide(key, ident)}")


class PickScoreBenchmark(Benchmark):
    name = "pickscore"
    version = VERSION

    def __init__(
        self,
        engine: str | None = None,
        workers: int | None = None,  # accepted for interface uniformity; scoring is batched on one device
        model_path: str | None = None,
        processor_path: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
        allow_download: bool | None = None,
    ):
        if engine not in (None, "transformers"):
            raise BenchmarkError(f"pickscore: unknown engine {engine!r}; only 'transformers' is supported")
        if dtype not in _DTYPES:
            raise BenchmarkError(f"pickscore: dtype must be one of {_DTYPES}, got {dtype!r}")
        if int(batch_size) < 1:
            raise BenchmarkError(f"pickscore: batch_size must be >= 1, got {batch_size}")
        self.model_path = str(model_path or DEFAULT_MODEL)
        self.processor_path = str(processor_path or DEFAULT_PROCESSOR)
        self.device = device
        self.dtype = dtype
        self.batch_size = int(batch_size)
        if allow_download is None:
            allow_download = os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False")
        self.allow_download = bool(allow_download)
        self._model = None
        self._processor = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ interface
    @property
    def engine(self) -> str:
        label = f"transformers:{self.model_path}"
        if self.processor_path != DEFAULT_PROCESSOR:
            label += f"|processor={self.processor_path}"
        if self.dtype != "float32":
            label += f"|{self.dtype}"
        return label

    def prompt_sets(self) -> dict[str, PromptSet]:
        sets = {}
        for k, (f, sha) in PROMPT_SETS.items():
            ps = PromptSet.from_text(k, DATA_DIR / f, sha)
            ps.metadata = [{"nsfw": is_nsfw(p)} for p in ps.prompts]
            sets[k] = ps
        return sets

    def check_models(self) -> ModelStatus:
        m = _status_of(self.model_path, "model_path", ("config.json",))
        p = _status_of(self.processor_path, "processor_path", ("preprocessor_config.json|processor_config.json",))
        if m.available and p.available:
            return ModelStatus(True, f"{m.detail}; {p.detail}")
        return ModelStatus(False, "; ".join(s.detail for s in (m, p) if not s.available))

    def score_batch(self, images, prompts, metadata=None) -> list[dict]:
        validate_batch(self.name, images, prompts, metadata)
        if not images:
            return []
        raw = self.raw_scores(images, prompts)
        return [{"score": float(s), "raw_score": float(s), "reward": float(s) / REWARD_SCALE} for s in raw]

    # ------------------------------------------------------------------ model
    def _load(self):
        with self._lock:
            if self._model is not None:
                return self._processor, self._model
            problems = []
            for ident, key, files in ((self.model_path, "model_path", ("config.json",)),
                                      (self.processor_path, "processor_path",
                                       ("preprocessor_config.json|processor_config.json",))):
                is_local = Path(ident).expanduser().exists() or ident.startswith(("/", "./", "../", "~"))
                if is_local or not self.allow_download:
                    st = _status_of(ident, key, files)
                    if not st.available:
                        problems.append(st.detail)
            if problems:
                raise ModelUnavailableError("pickscore: " + " | ".join(problems))

            processor = self._from_pretrained(AutoProcessor, self.processor_path, "processor_path")
            model = self._from_pretrained(CLIPModel, self.model_path, "model_path",
                                          dtype=getattr(torch, self.dtype))
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = model.to(device).eval().requires_grad_(False)
            self._processor, self._model, self._device = processor, model, device
            return processor, model

    def _from_pretrained(self, cls, ident: str, key: str, **kw):
        p = Path(ident).expanduser()
        local = p.exists() or ident.startswith(("/", "./", "../", "~"))
        if local and not p.is_dir():
            raise ModelUnavailableError(f"pickscore: {key}={ident} does not exist; {_how_to_provide(key, ident)}")
        src = str(p) if local else ident
        errors = []
        for local_only in ((True,) if local or not self.allow_download else (True, False)):
            try:
                return cls.from_pretrained(src, local_files_only=local_only, **kw)
            except Exception as e:  # noqa: BLE001 - OSError / ValueError / HF errors: all mean "not available"
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise ModelUnavailableError(
            f"pickscore: cannot load {cls.__name__} from {key}={ident} ({errors[-1]}); {_how_to_provide(key, ident)}"
        )

    def raw_scores(self, images, prompts) -> np.ndarray:
        """``logit_scale.exp() * cos(text_i, image_i)`` for each pair, float64 array."""
        processor, model = self._load()
        out = []
        with torch.no_grad():
            for s in range(0, len(images), self.batch_size):
                ims = [to_rgb(im) for im in images[s : s + self.batch_size]]
                txt = list(prompts[s : s + self.batch_size])
                img_in = processor(images=ims, return_tensors="pt")
                txt_in = processor(text=txt, padding=True, truncation=True, max_length=MAX_TEXT_TOKENS,
                                   return_tensors="pt")
                pv = img_in["pixel_values"].to(self._device, dtype=model.dtype)
                img_f = _features(model.get_image_features(pixel_values=pv))
                txt_f = _features(model.get_text_features(
                    input_ids=txt_in["input_ids"].to(self._device),
                    attention_mask=txt_in["attention_mask"].to(self._device)))
                img_f = img_f.float() / img_f.float().norm(dim=-1, keepdim=True)
                txt_f = txt_f.float() / txt_f.float().norm(dim=-1, keepdim=True)
                score = model.logit_scale.float().exp() * (txt_f * img_f).sum(dim=-1)
                out.append(score.double().cpu().numpy())
        scores = np.concatenate(out)
        if not np.all(np.isfinite(scores)):
            bad = np.flatnonzero(~np.isfinite(scores)).tolist()
            raise BenchmarkError(f"pickscore: non-finite score for sample(s) {bad[:10]} (model {self.model_path})")
        return scores


def _features(out):
    """transformers 4.x returns a tensor, 5.x a BaseModelOutputWithPooling (projected pooler_output)."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def make_benchmark(**options: Any) -> PickScoreBenchmark:
    return PickScoreBenchmark(**options)
