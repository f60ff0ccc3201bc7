"""OCR engines behind one small interface.

``engine.recognize(rgb: np.ndarray[H, W, 3] uint8) -> list[(text, confidence in [0, 1])]`` in the
engine's reading order (top-to-bottom, left-to-right), *before* the score threshold.

Engines:
* ``rapidocr`` (default): ``rapidocr_onnxruntime``; its wheel ships PaddleOCR-family ONNX models
  (ch_PP-OCRv4 det/rec), so it works offline.  No angle classifier (``use_cls=False``).
* ``paddleocr``: PaddleOCR 2.x ``PaddleOCR(use_angle_cls=False, lang="en")`` when installed
  (the upstream engine; needs its models downloaded or cached).
* ``tesseract``: ``pytesseract`` + the ``tesseract`` binary, when installed.

Like upstream (PaddleOCR gets the RGB uint8 array, which it treats as BGR), the RGB array is
handed to RapidOCR / PaddleOCR as-is.  Results from different engines are labelled by
:attr:`OcrEngine.label` and must never be mixed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.base import ModelStatus
from benchmarks.errors import BenchmarkError, ModelUnavailableError

# every engine is an optional extra (ocr, ocr-paddle, ocr-tesseract); each says how to install it
# when it is missing (RapidOCR: through its missing model files, see _missing_rapidocr_msg)
try:
    from rapidocr_onnxruntime import RapidOCR
except ImportError:
    RapidOCR = None
try:
    from paddleocr import PaddleOCR
except ImportError:
    PaddleOCR = None
try:
    import pytesseract
except ImportError:
    pytesseract = None

ENGINES = ("rapidocr", "paddleocr", "tesseract")
DEFAULT_ENGINE = "rapidocr"


def _pkg_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class EngineSpec:
    """Picklable description of an engine (sent to worker processes)."""

    name: str = DEFAULT_ENGINE
    options: dict[str, Any] = field(default_factory=dict)
    threads: int = 1  # intra-op threads of the engine (1 per worker process)

    def __post_init__(self):
        if self.name not in ENGINES:
            raise BenchmarkError(f"ocr: unknown engine {self.name!r}; choose one of {', '.join(ENGINES)}")
        allowed = _ENGINE_OPTIONS[self.name]
        bad = sorted(set(self.options) - allowed)
        if bad:
            raise BenchmarkError(
                f"ocr: engine {self.name!r} does not accept option(s) {bad}; accepted: {sorted(allowed) or 'none'}"
            )


_ENGINE_OPTIONS: dict[str, set[str]] = {
    "rapidocr": {"det_model_path", "rec_model_path", "rec_keys_path"},
    "paddleocr": {"lang", "det_model_dir", "rec_model_dir"},
    "tesseract": {"psm", "lang", "tesseract_cmd"},
}


class OcrEngine:
    name: str = ""

    @property
    def label(self) -> str:  # pragma: no cover - overridden
        return self.name

    def recognize(self, rgb: np.ndarray) -> list[tuple[str, float]]:  # pragma: no cover - overridden
        raise NotImplementedError


# --------------------------------------------------------------------------------- RapidOCR
def _rapidocr_default_models() -> dict[str, Path] | None:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "models"
    return {
        "det_model_path": root / "ch_PP-OCRv4_det_infer.onnx",
        "rec_model_path": root / "ch_PP-OCRv4_rec_infer.onnx",
    }


def _rapidocr_paths(options: dict) -> dict[str, Path]:
    defaults = _rapidocr_default_models()
    if defaults is None:
        raise ModelUnavailableError(
            "ocr engine 'rapidocr' needs the Python package rapidocr-onnxruntime (it ships the ONNX models): "
            "pip install 'rapidocr-onnxruntime>=1.3,<2' (or the project's [ocr] extra), "
            "or choose another engine with engine=paddleocr|tesseract"
        )
    paths = dict(defaults)
    for key in ("det_model_path", "rec_model_path"):
        if options.get(key):
            paths[key] = Path(options[key])
    if options.get("rec_keys_path"):
        paths["rec_keys_path"] = Path(options["rec_keys_path"])
    return paths


def _rapidocr_status(options: dict) -> ModelStatus:
    try:
        paths = _rapidocr_paths(options)
    except ModelUnavailableError as e:
        return ModelStatus(False, str(e))
    missing = [f"{k}={p}" for k, p in paths.items() if not p.is_file()]
    if missing:
        return ModelStatus(False, _missing_rapidocr_msg(missing))
    return ModelStatus(True, f"rapidocr-onnxruntime {_pkg_version('rapidocr-onnxruntime')}: "
                       + ", ".join(p.name for p in paths.values()))


def _missing_rapidocr_msg(missing: list[str]) -> str:
    return (
        "ocr engine 'rapidocr': model file(s) not found: " + "; ".join(missing)
        + ". Set reward_kwargs.ocr.<det_model_path|rec_model_path> (or `awm bench score ocr --opt KEY=PATH`) "
        "to an existing ONNX file, or leave them unset to use the models shipped in the rapidocr-onnxruntime "
        "wheel (pip install --force-reinstall 'rapidocr-onnxruntime>=1.3,<2')"
    )


class RapidOcrEngine(OcrEngine):
    name = "rapidocr"

    def __init__(self, options: dict | None = None, threads: int = 1):
        options = dict(options or {})
        paths = _rapidocr_paths(options)
        missing = [f"{k}={p}" for k, p in paths.items() if not p.is_file()]
        if missing:
            raise ModelUnavailableError(_missing_rapidocr_msg(missing))
        kwargs: dict[str, Any] = {
            "use_cls": False,  # no angle classifier (upstream use_angle_cls=False)
            "text_score": 0.5,
            # PaddleOCR 2.x detector resize defaults (det_limit_side_len=960, det_limit_type="max":
            # only images larger than 960 px are shrunk).  RapidOCR's own default (min side -> 736)
            # upscales 512 px images; accuracy on renders is the same, 512 px scoring ~25% faster.
            "det_limit_side_len": 960,
            "det_limit_type": "max",
            "det_model_path": str(paths["det_model_path"]),
            "rec_model_path": str(paths["rec_model_path"]),
        }
        if "rec_keys_path" in paths:
            kwargs["rec_keys_path"] = str(paths["rec_keys_path"])
        if threads and threads > 0:
            kwargs["intra_op_num_threads"] = int(threads)
            kwargs["inter_op_num_threads"] = 1
        self._ocr = RapidOCR(**kwargs)
        self._label = engine_label(EngineSpec("rapidocr", options, threads))

    @property
    def label(self) -> str:
        return self._label

    def recognize(self, rgb: np.ndarray) -> list[tuple[str, float]]:
        result, _elapse = self._ocr(rgb, use_cls=False)
        if not result:
            return []
        return [(str(r[1]), float(r[2])) for r in result]


# -------------------------------------------------------------------------------- PaddleOCR
class PaddleOcrEngine(OcrEngine):
    name = "paddleocr"

    def __init__(self, options: dict | None = None, threads: int = 1):
        options = dict(options or {})
        if PaddleOCR is None:
            raise ModelUnavailableError(
                "ocr engine 'paddleocr' is not installed: pip install 'paddleocr>=2.7' paddlepaddle "
                "(the [ocr-paddle] extra), with its en det/rec models downloaded or cached; "
                "or use the default engine 'rapidocr'"
            )
        self._version = _pkg_version("paddleocr")
        lang = options.get("lang", "en")
        self._major = int(self._version.split(".")[0]) if self._version[:1].isdigit() else 2
        kw: dict[str, Any] = {"lang": lang}
        try:
            if self._major >= 3:
                kw.update(use_doc_orientation_classify=False, use_doc_unwarping=False,
                          use_textline_orientation=False, text_rec_score_thresh=0.5)
                if options.get("det_model_dir"):
                    kw["text_detection_model_dir"] = options["det_model_dir"]
                if options.get("rec_model_dir"):
                    kw["text_recognition_model_dir"] = options["rec_model_dir"]
            else:
                kw.update(use_angle_cls=False, use_gpu=False, show_log=False, drop_score=0.5,
                          cpu_threads=max(1, int(threads or 1)))
                if options.get("det_model_dir"):
                    kw["det_model_dir"] = options["det_model_dir"]
                if options.get("rec_model_dir"):
                    kw["rec_model_dir"] = options["rec_model_dir"]
            self._ocr = PaddleOCR(**kw)
        except Exception as e:  # download failure offline, bad dirs...
            raise ModelUnavailableError(
                f"ocr engine 'paddleocr' {self._version} could not load its models ({type(e).__name__}: {e}); "
                "set reward_kwargs.ocr.det_model_dir / rec_model_dir to local PaddleOCR inference model "
                "directories, or pre-download them into ~/.paddleocr; or use engine 'rapidocr'"
            ) from e
        self._label = engine_label(EngineSpec("paddleocr", options, threads))

    @property
    def label(self) -> str:
        return self._label

    def recognize(self, rgb: np.ndarray) -> list[tuple[str, float]]:
        if self._major >= 3:  # pragma: no cover - not installed in CI
            out = []
            for res in self._ocr.predict(rgb):
                texts = res.get("rec_texts", [])
                scores = res.get("rec_scores", [])
                out.extend((str(t), float(s)) for t, s in zip(texts, scores))
            return out
        result = self._ocr.ocr(rgb, cls=False)  # pragma: no cover - not installed in CI
        if not result or not result[0]:
            return []
        return [(str(text), float(conf)) for _box, (text, conf) in result[0]]


# -------------------------------------------------------------------------------- tesseract
class TesseractEngine(OcrEngine):
    name = "tesseract"

    def __init__(self, options: dict | None = None, threads: int = 1):
        options = dict(options or {})
        if pytesseract is None:
            raise ModelUnavailableError(
                "ocr engine 'tesseract' needs pytesseract: pip install 'pytesseract>=0.3' "
                "and apt-get install tesseract-ocr tesseract-ocr-eng; or use engine 'rapidocr'"
            )
        cmd = options.get("tesseract_cmd") or shutil.which("tesseract")
        if not cmd or not Path(cmd).exists():
            raise ModelUnavailableError(
                f"ocr engine 'tesseract': binary not found ({options.get('tesseract_cmd') or 'tesseract on PATH'}); "
                "apt-get install tesseract-ocr tesseract-ocr-eng, or set tesseract_cmd to its path"
            )
        pytesseract.pytesseract.tesseract_cmd = cmd
        self._pt = pytesseract
        self._psm = int(options.get("psm", 3))
        self._lang = options.get("lang", "eng")
        os.environ.setdefault("OMP_THREAD_LIMIT", str(max(1, int(threads or 1))))
        self._label = engine_label(EngineSpec("tesseract", options, threads))

    @property
    def label(self) -> str:
        return self._label

    def recognize(self, rgb: np.ndarray) -> list[tuple[str, float]]:  # pragma: no cover - optional
        data = self._pt.image_to_data(
            Image.fromarray(rgb), lang=self._lang, config=f"--psm {self._psm}", output_type=self._pt.Output.DICT
        )
        out = []
        for text, conf in zip(data["text"], data["conf"]):
            text = str(text).strip()
            c = float(conf)
            if text and c >= 0:
                out.append((text, c / 100.0))
        return out


_ENGINE_CLASSES = {"rapidocr": RapidOcrEngine, "paddleocr": PaddleOcrEngine, "tesseract": TesseractEngine}


def build_engine(spec: EngineSpec) -> OcrEngine:
    return _ENGINE_CLASSES[spec.name](spec.options, spec.threads)


def engine_label(spec: EngineSpec) -> str:
    """Label identifying engine + models, computed without loading anything."""
    o = spec.options
    if spec.name == "rapidocr":
        if any(o.get(k) for k in ("det_model_path", "rec_model_path", "rec_keys_path")):
            d = _rapidocr_default_models() or {}
            det = Path(o.get("det_model_path") or d.get("det_model_path", "det")).stem
            rec = Path(o.get("rec_model_path") or d.get("rec_model_path", "rec")).stem
            models = f"{det}+{rec}"
        else:
            models = "ch_PP-OCRv4"
        return f"rapidocr-onnxruntime-{_pkg_version('rapidocr-onnxruntime')}:{models}"
    if spec.name == "paddleocr":
        return f"paddleocr-{_pkg_version('paddleocr')}:{o.get('lang', 'en')}"
    return f"tesseract-{_tesseract_version(o)}:{o.get('lang', 'eng')}:psm{int(o.get('psm', 3))}"


def _tesseract_version(options: dict) -> str:
    cmd = options.get("tesseract_cmd") or shutil.which("tesseract")
    if not cmd:
        return "unknown"
    try:
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=10, check=False)
        first = (out.stdout or out.stderr).splitlines()[0]
        return first.split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def engine_status(spec: EngineSpec) -> ModelStatus:
    """Cheap availability check (no model load for rapidocr)."""
    if spec.name == "rapidocr":
        return _rapidocr_status(spec.options)
    if spec.name == "paddleocr":
        if importlib.util.find_spec("paddleocr") is None:
            return ModelStatus(False, "paddleocr not installed (pip install 'paddleocr>=2.7' paddlepaddle)")
        return ModelStatus(True, f"paddleocr {_pkg_version('paddleocr')} installed (models load on first use)")
    if importlib.util.find_spec("pytesseract") is None:
        return ModelStatus(False, "pytesseract not installed (pip install pytesseract; apt-get install tesseract-ocr)")
    cmd = spec.options.get("tesseract_cmd") or shutil.which("tesseract")
    if not cmd or not Path(cmd).exists():  # the same test as TesseractEngine's: a configured path may be wrong
        return ModelStatus(
            False, f"tesseract binary not found ({cmd or 'tesseract on PATH'}; apt-get install tesseract-ocr tesseract-ocr-eng)"
        )
    return ModelStatus(True, f"pytesseract {_pkg_version('pytesseract')} with {cmd}")
