"""GenEval colour classification: masked crops and the CLIP zero-shot colour classifier.

Upstream (``evaluate_images.py`` ``ImageCrops`` + ``color_classification``):
- crop input = ``Image.composite(image_rgb, solid #999 canvas, instance mask)`` then
  ``.crop(box[:4])`` (PIL rounds the float box);
- open_clip ``ViT-L-14`` / ``pretrained="openai"`` preprocess: resize the short side to 224
  (bicubic), centre crop 224, OpenAI mean/std;
- per object class a zero-shot classifier over the 10 colours with 3 templates
  (``a photo of a {c} {cls}``, ``a photo of a {c}-colored {cls}``, ``a photo of a {c} object``):
  L2-normalise each template embedding, average, re-normalise; prediction = argmax of
  ``normalize(image_feature) @ W`` (clip_benchmark ``zero_shot_classifier`` /
  ``run_classification``, fp16 autocast on GPU).

Here the same model comes from transformers (``openai/clip-vit-large-patch14`` is the HF
conversion of the same OpenAI ViT-L/14 weights); the preprocessing is re-implemented with PIL
exactly as open_clip's torchvision transform does it, not taken from a processor config.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

from benchmarks.errors import BenchmarkError, ModelUnavailableError
from benchmarks.geneval.prompts import COLORS

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.geneval.rules import Detection

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_ENV = "AWM_GENEVAL_CLIP"

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {classname}",
    "a photo of a {c}-colored {classname}",
    "a photo of a {c} object",
)


@runtime_checkable
class ColorClassifier(Protocol):
    """``classify(crops, class_names)``: one colour (from :data:`COLORS`) per crop."""

    def classify(self, crops: Sequence[Image.Image], class_names: Sequence[str]) -> list[str]: ...


def make_color_crop(
    image: Image.Image, det: Detection, bgcolor: str = "#999", crop: bool = True
) -> Image.Image:
    """The object pasted onto a ``bgcolor`` canvas through its mask, then cropped to its box."""
    rgb = image.convert("RGB")
    if det.mask is not None:
        mask = np.asarray(det.mask, dtype=bool)
        if mask.shape != (rgb.height, rgb.width):
            raise BenchmarkError(
                f"geneval: mask of a {det.class_name} detection has shape {mask.shape}, image is {rgb.height}x{rgb.width}"
            )
        blank = rgb.copy() if bgcolor == "original" else Image.new("RGB", rgb.size, color=bgcolor)
        out = Image.composite(rgb, blank, Image.fromarray(mask))
    else:
        out = rgb
    if crop:
        out = out.crop(tuple(det.box[:4]))
        if out.width < 1 or out.height < 1:
            # Upstream would crash on an empty crop; a degenerate box can only come from a
            # degenerate mask. Use the 1-pixel crop at the box corner instead.
            x, y = round(det.box[0]), round(det.box[1])
            x = min(max(x, 0), rgb.width - 1)
            y = min(max(y, 0), rgb.height - 1)
            out = rgb.crop((x, y, x + 1, y + 1))
    return out


def openai_clip_preprocess(image: Image.Image, size: int = 224) -> np.ndarray:
    """open_clip's OpenAI eval transform: Resize(size, bicubic) on the short side,
    CenterCrop(size), RGB, ToTensor, Normalize(OpenAI mean/std) -> float32 [3, size, size]."""
    image = image.convert("RGB")
    w, h = image.size
    # torchvision _compute_resized_output_size: short side -> size, long side -> int(size*long/short)
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    # torchvision center_crop: top = int(round((h - size) / 2)), left likewise
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    image = image.crop((left, top, left + size, top + size))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(OPENAI_MEAN, dtype=np.float32)) / np.asarray(OPENAI_STD, dtype=np.float32)
    return arr.transpose(2, 0, 1).copy()


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _missing_model_message(kind: str, path: str, env: str, default: str, exc: BaseException | None) -> str:
    why = f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})" if exc else ""
    return (
        f"GenEval {kind} weights are not available at {path!r}{why}. Provide them as a local directory in "
        f"transformers format (config.json + weights, e.g. `huggingface-cli download {default} --local-dir DIR` "
        f"on a machine with network access) and pass its path (benchmark option / reward kwarg, or ${env})."
    )


def model_status(path: str, kind: str, env: str, default: str) -> tuple[bool, str]:
    """Cheap availability check of a transformers checkpoint (local dir or HF cache); never raises."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return True, f"{kind}: local checkpoint {p}"
        return False, _missing_model_message(kind, str(p), env, default, None) + " (config.json missing)"
    if os.sep in path or path.startswith(".") or p.suffix:
        return False, _missing_model_message(kind, path, env, default, None)
    try:
        hit = try_to_load_from_cache(path, "config.json")
    except Exception:  # noqa: BLE001 - an odd id is simply "not available"; status never raises
        hit = None
    if isinstance(hit, str):
        return True, f"{kind}: {path} in the Hugging Face cache"
    return False, _missing_model_message(kind, path, env, default, None)


class ClipColorClassifier:
    """CLIP (transformers ``CLIPModel``) zero-shot colour classifier with GenEval's templates."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = "auto",
        amp: bool = True,
        batch_size: int = 16,
    ) -> None:
        self.model_path = str(model_path or os.environ.get(CLIP_ENV) or DEFAULT_CLIP)
        self.device = device
        self.amp = amp
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._classifiers: dict[str, Any] = {}

    # -------------------------------------------------------------- loading
    def load(self) -> None:
        if self._model is not None:
            return
        try:
            model = CLIPModel.from_pretrained(self.model_path)
            tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                _missing_model_message("CLIP colour classifier", self.model_path, CLIP_ENV, DEFAULT_CLIP, exc)
            ) from exc
        self.device = resolve_device(self.device)
        self._model = model.eval().to(self.device)
        self._tokenizer = tokenizer

    @property
    def image_size(self) -> int:
        self.load()
        return int(self._model.config.vision_config.image_size)

    def _autocast(self) -> Any:
        if self.amp and str(self.device).startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @staticmethod
    def _features(out: Any) -> Any:
        # transformers 5 returns a ModelOutput whose pooler_output is the projected feature;
        # older versions return the tensor itself.
        return out if hasattr(out, "norm") else out.pooler_output

    def text_classifier(self, classname: str) -> Any:
        """``[dim, 10]`` zero-shot weights for one object class (cached)."""
        if classname in self._classifiers:
            return self._classifiers[classname]
        self.load()
        weights = []
        with torch.no_grad(), self._autocast():
            for c in COLORS:
                texts = [t.format(c=c, classname=classname) for t in COLOR_TEMPLATES]
                tok = self._tokenizer(
                    texts, padding=True, truncation=True, max_length=77, return_tensors="pt"
                )
                tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
                emb = self._features(self._model.get_text_features(**tok))
                emb = F.normalize(emb, dim=-1).mean(dim=0)
                emb = emb / emb.norm()
                weights.append(emb)
        w = torch.stack(weights, dim=1)
        self._classifiers[classname] = w
        return w

    def classify(self, crops: Sequence[Image.Image], class_names: Sequence[str]) -> list[str]:
        if len(crops) != len(class_names):
            raise BenchmarkError(
                f"geneval colour classifier: {len(crops)} crops but {len(class_names)} class names"
            )
        if not crops:
            return []
        self.load()
        size = self.image_size
        out: list[str | None] = [None] * len(crops)
        by_class: dict[str, list[int]] = {}
        for i, cls in enumerate(class_names):
            by_class.setdefault(cls, []).append(i)
        for cls, idxs in by_class.items():
            clf = self.text_classifier(cls)
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start : start + self.batch_size]
                pix = torch.from_numpy(np.stack([openai_clip_preprocess(crops[i], size) for i in chunk]))
                with torch.no_grad(), self._autocast():
                    feats = self._features(self._model.get_image_features(pixel_values=pix.to(self.device)))
                    feats = F.normalize(feats, dim=-1)
                    logits = 100.0 * feats @ clf.to(feats.dtype)
                for i, k in zip(chunk, logits.argmax(dim=1).tolist()):
                    out[i] = COLORS[k]
        return [c for c in out if c is not None]
