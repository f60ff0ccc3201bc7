"""OCR reward formula (Flow-GRPO / AWM ``flow_grpo/ocr.py::OcrScorer``), pure functions.

* target = text between the FIRST pair of straight double quotes of the prompt;
* normalise both sides by removing ASCII spaces and ``str.lower()`` (punctuation is kept);
* if the target is a substring of the concatenated recognised text -> 1.0;
  otherwise ``1 - min(Levenshtein(rec, tgt), L) / L`` with L the space-stripped target length.
"""

from __future__ import annotations

from collections.abc import Iterable

from benchmarks.errors import BenchmarkError

try:  # the C implementation (a dependency); the pure-Python fallback below gives the same result
    import Levenshtein
except ImportError:  # pragma: no cover
    Levenshtein = None

#: recognitions with confidence below this are dropped (PaddleOCR drop_score / RapidOCR text_score)
SCORE_THRESHOLD = 0.5


def extract_target(prompt: str) -> str:
    """Text inside the first pair of straight double quotes (``prompt.split('"')[1]``)."""
    if not isinstance(prompt, str):
        raise BenchmarkError(f"ocr: prompt must be a str, got {type(prompt).__name__}")
    parts = prompt.split('"')
    if len(parts) < 3:
        raise BenchmarkError(
            f'ocr: prompt has no text between a pair of straight double quotes ("..."): {prompt[:120]!r}'
        )
    return parts[1]


def normalize(text: str) -> str:
    """Remove ASCII spaces and lower-case (punctuation and other whitespace kept, as upstream)."""
    return text.replace(" ", "").lower()


def levenshtein(a: str, b: str) -> int:
    if Levenshtein is not None:
        return int(Levenshtein.distance(a, b))
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_reward(recognized: str, target: str) -> tuple[float, int]:
    """Return ``(reward, distance)`` for the concatenated recognised text and the raw target.

    ``distance`` is the capped edit distance actually used (0 on a substring match).
    """
    tgt = normalize(target)
    if not tgt:
        raise BenchmarkError(f"ocr: empty target after removing spaces (target {target!r})")
    rec = normalize(recognized)
    dist = 0 if tgt in rec else levenshtein(rec, tgt)
    dist = min(dist, len(tgt))
    return 1.0 - dist / len(tgt), dist


def concat_recognitions(results: Iterable[tuple[str, float]], threshold: float = SCORE_THRESHOLD) -> str:
    """Concatenate recognised texts (engine box order, no separator), dropping conf < threshold."""
    return "".join(text for text, conf in results if float(conf) >= threshold)
