"""OCR training prompts: a seeded generator (NOT upstream's set).

Flow-GRPO / AWM train on ``dataset/ocr/train.txt`` (about 20K GPT-4o prompts); that file is not
available in any public snapshot, so ``data/train.txt`` is generated here instead, byte for byte
reproducibly (``generate_train_text()`` == the shipped file; a test regenerates and compares).

Each prompt is ``<opener><object> <link> "<TARGET>" <style><context>.[ <sentence>]``: a scene
description with exactly one pair of straight double quotes around the target text, like the
test prompts (``data/test.txt``; benchmarks.md §3.1). The target is a phrase pattern filled from
the shipped word list ``data/train_words.tsv`` (``category<TAB>Word``; written for this project,
Apache-2.0 like the repository), plus numbers, prices and percentages. Rules, matched to the test
set's measured shape:

* phrase length 1-6 words, drawn with the test set's word-count mix (1: 4 %, 2: 24 %, 3: 44 %,
  4: 23 %, 5: 5 %, 6: 1 %); 2-29 characters, as the test targets;
* alphabet: ASCII letters, digits, space and ``' % $ : ? ! & -`` (the test set's ASCII
  punctuation); no non-ASCII characters (the English OCR dictionary cannot emit them);
* casing: Title Case 80 % (small words lower-case), sentence case 15 %, lower 3 %, UPPER 2 %;
* digits in about 20 % of the targets (test: 23 %), punctuation in about 3 % (test: 4 %);
* disjoint from the test set: no target whose normalised form (spaces removed, lower-cased:
  the reward's own normalisation) equals a test target's, and no target repeated within the set.

Randomness comes only from ``random.Random(seed).random()``, whose sequence Python guarantees
across versions (``choice``/``randrange`` are not guaranteed), so the file does not depend on the
interpreter or numpy. Bump ``GENERATOR_VERSION`` (and regenerate, and update the sha256 here and in
README.md) whenever the output changes: ``python -m benchmarks.ocr.prompts --write``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

from benchmarks.base import read_prompt_lines
from benchmarks.files import atomic_write
from benchmarks.ocr.scoring import extract_target, normalize

DATA_DIR = Path(__file__).resolve().parent / "data"
GENERATOR_VERSION = "ocr-train-gen-1.0"
TRAIN_FILE = "train.txt"
WORDS_FILE = "train_words.tsv"
TRAIN_N = 20_000
TRAIN_SEED = 0
#: sha256 of the shipped files (also in README.md's data table; tests check both)
TRAIN_SHA256 = "60f5129c33b19233127d8c25d812028c41b144db08df2b0dd79790bac510ea20"
WORDS_SHA256 = "594b54a881a757ed6b1150d6b5ed79870ea42dc71676564bb345e68972906fd9"

MIN_TARGET_CHARS, MAX_TARGET_CHARS = 2, 29
TARGET_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '%$:?!&-")
WORD_CATEGORIES = ("adj", "noun", "verb", "name", "unit", "tail")
#: words kept lower-case inside a Title Case target (as in the test set: "Age of Dinosaurs")
SMALL_WORDS = frozenset({"a", "an", "the", "of", "and", "for", "to", "in", "on", "at", "or"})

#: phrase patterns by word count, each with a relative weight; ``{slot}`` is filled, the rest is literal.
#: Weights keep digits in about a quarter and punctuation in about 5 % of the targets, as in the test set.
PATTERNS: dict[int, tuple[tuple[str, float], ...]] = {
    1: (("{noun}", 1.0), ("{verb}", 1.0), ("{adj}", 0.5), ("{noun}!", 0.1)),
    2: (("{adj} {noun}", 1.0), ("{verb} {noun}", 1.0), ("{noun} {tail}", 1.0), ("{verb} {tail}", 0.7),
        ("{adj} {tail}", 0.5), ("{unit} {num}", 0.9), ("{noun} {num}", 0.4), ("{num} {noun}", 0.4),
        ("{name}'s {noun}", 0.1), ("{noun} {pct}", 0.05)),
    3: (("{adj} {noun} {tail}", 1.0), ("{verb} the {noun}", 1.0), ("{verb} your {noun}", 1.0),
        ("{noun} of {noun}", 1.0), ("{adj} {noun} {noun}", 1.0), ("{noun} and {noun}", 0.8),
        ("{verb} {noun} {tail}", 0.8), ("{verb} more {noun}", 0.4), ("No {noun} {tail}", 0.4),
        ("{num} {adj} {noun}", 0.6), ("{unit} {num} {tail}", 0.5), ("{adj} {noun} {year}", 0.6),
        ("{noun} {unit} {num}", 0.4), ("{name}'s {adj} {noun}", 0.15), ("{noun} & {noun}", 0.05),
        ("{noun} {pct} off", 0.05), ("Warning: {adj} {noun}", 0.05)),
    4: (("{verb} the {adj} {noun}", 1.0), ("{noun} of the {noun}", 1.0), ("{adj} {noun} and {noun}", 1.0),
        ("{verb} your {noun} {tail}", 1.0), ("The {adj} {noun} {noun}", 0.8), ("{verb} and {verb} {tail}", 0.5),
        ("Do not {verb} {tail}", 0.4), ("{num} {adj} {noun} {tail}", 0.6), ("{adj} {noun} {unit} {small}", 0.4),
        ("Is it {noun} yet?", 0.05), ("{adj} {noun} {pct} off", 0.05), ("{noun} {small} for {price}", 0.05),
        ("Caution: {adj} {noun} {tail}", 0.05), ("{name} & {name} {tail}", 0.05),
        ("{name}'s {noun} {unit} {small}", 0.05)),
    5: (("{verb} the {noun} of {noun}", 1.0), ("The {adj} {noun} of {noun}", 1.0),
        ("{verb} your {adj} {noun} {tail}", 1.0), ("Do not {verb} the {noun}", 0.6),
        ("{adj} {noun} {small} for {price}", 0.1), ("{name}'s {noun} and {noun} {tail}", 0.1)),
    6: (("{verb} the {adj} {noun} of {noun}", 1.0), ("The {noun} of the {adj} {noun}", 1.0)),
}
#: the test set's word-count mix, in percent (benchmarks.md §3.1; 6 and 7 words merged)
WORD_COUNT_WEIGHTS: dict[int, float] = {1: 4.0, 2: 24.0, 3: 44.0, 4: 23.0, 5: 5.0, 6: 1.0}
CASE_WEIGHTS: dict[str, float] = {"title": 80.0, "sentence": 15.0, "lower": 3.0, "upper": 2.0}

OPENERS: tuple[str, ...] = (
    "", "", "", "A photograph of ", "A close-up photo of ", "A realistic image of ", "A detailed illustration of ",
    "A cinematic shot of ", "A vintage photograph of ", "A watercolor painting of ", "A high-resolution photo of ",
    "A flat vector illustration of ", "A 3D render of ", "An oil painting of ", "A macro shot of ",
    "A wide-angle photo of ", "A polaroid snapshot of ", "A digital painting of ",
)
#: object kinds: (objects, links); each object phrase carries its article
OBJECT_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sign": (
        ("a weathered wooden sign", "a hand-painted shop sign", "a glowing neon sign", "a chalkboard sandwich board",
         "a roadside billboard", "a long street banner", "an enamel railway station sign", "a rusty vintage metal sign",
         "a hanging pub sign", "a paper notice pinned to a corkboard", "a cardboard sign held up in a crowd",
         "a cafe menu board", "a trail marker post", "a rooftop billboard", "a small handwritten price tag",
         "a striped construction barrier", "a farm stand sign", "a lightbox sign above a doorway"),
        ("that reads", "reading", "that says", "with the words", "displaying the text", "announcing",
         "bearing the message", "with the phrase", "that clearly reads"),
    ),
    "engraved": (
        ("a brass plaque", "an engraved silver locket", "a granite monument", "a wooden cutting board",
         "a bronze medal", "an old pocket watch", "a stone archway", "a leather-bound journal", "a copper bell"),
        ("engraved with", "with the inscription", "carved with the words", "etched with", "stamped with"),
    ),
    "fabric": (
        ("a cotton t-shirt", "a knitted sweater", "a canvas tote bag", "a baseball cap", "a team jersey",
         "a throw pillow", "a denim jacket patch", "a kitchen apron", "a beach towel", "a flag waving in the wind"),
        ("embroidered with", "printed with", "stitched with the words", "featuring the slogan", "with the motto"),
    ),
    "screen": (
        ("a smartphone lock screen", "a retro computer monitor", "a highway message board", "a laptop screen",
         "a smartwatch face", "an LED ticker above a shop door", "a vending machine display", "an arcade cabinet screen",
         "a spaceship control panel", "an airport departure board", "a scoreboard in a stadium"),
        ("displaying", "flashing", "showing the message", "that reads", "with the alert", "scrolling the words"),
    ),
    "print": (
        ("a paperback book cover", "a movie poster", "a concert flyer", "a vintage magazine cover",
         "a newspaper front page", "a cereal box", "a jam jar label", "a glass bottle label", "a postage stamp",
         "a greeting card", "a luggage tag", "a seed packet", "a coffee bag", "a comic book cover", "a board game box",
         "a museum ticket", "a pizza box", "a chocolate bar wrapper"),
        ("titled", "with the headline", "printed with", "with the title", "labeled", "with the title text"),
    ),
    "paint": (
        ("a brick wall mural", "the side of a delivery van", "a skateboard deck", "a wooden fence", "a subway car",
         "a surfboard", "a garage door", "a ceramic mug", "a guitar case", "a rowing boat"),
        ("with graffiti that reads", "painted with the words", "spelling out", "hand-lettered with",
         "decorated with the phrase"),
    ),
    "food": (
        ("a birthday cake", "a frosted sugar cookie", "a gingerbread house", "a wedding cake", "a tray of cupcakes"),
        ("decorated with the words", "piped with the message", "iced with the phrase", "topped with the message"),
    ),
}
STYLES: tuple[str, ...] = (
    "in bold red letters", "in elegant gold script", "in chunky hand-painted letters", "in glowing blue neon",
    "in crisp white capitals", "in a playful cartoon font", "in faded black stencil letters", "in tall serif type",
    "in loopy cursive", "in bright yellow block letters", "in neat handwriting", "in a retro 1970s typeface",
    "in embossed silver lettering", "in thick brush strokes", "in a clean sans-serif font",
    "in pixelated green characters", "in curly Victorian lettering", "in bold graffiti letters",
    "in small precise print", "in sparkling glitter letters", "in large friendly letters", "in sharp black ink",
)
CONTEXTS: tuple[str, ...] = (
    "set against a clear blue sky", "on a quiet street at dusk", "surrounded by potted plants and string lights",
    "in a busy market on a sunny afternoon", "beside a misty mountain lake", "lit by the warm glow of a nearby lamp",
    "on a rainy city sidewalk with reflections in the puddles", "in a cozy kitchen filled with morning light",
    "at a crowded summer festival", "in a snowy village square", "on a sandy beach at sunset",
    "in a dim workshop full of tools", "next to a stack of old books", "in a bright modern office",
    "at the edge of a pine forest", "inside a bustling train station", "on a desert highway under a blazing sun",
    "in a colorful children's playroom", "under the flickering lights of a night market",
    "on a wooden table scattered with flowers", "in a foggy harbor at dawn", "in front of a red brick building",
    "on a windowsill with rain streaking the glass", "in a futuristic city of glass towers",
    "at a small-town farmers market", "in a candlelit library", "beside a quiet country road",
    "in a sunlit greenhouse", "on the deck of a sailing ship", "in a neon-lit alley at midnight",
    "in a sleepy seaside town", "on a mountain trail above the clouds", "in a crowded school hallway",
    "at a roadside diner under a starry sky", "in an abandoned amusement park overgrown with ivy",
)
DETAILS: tuple[str, ...] = (
    "with people strolling by in the background", "with autumn leaves drifting across the ground",
    "with soft shadows falling across the scene", "with a few birds perched nearby",
    "while a gentle breeze stirs the trees", "with steam rising from a cup beside it",
    "with a bicycle leaning against the wall", "with fairy lights twinkling overhead",
    "with a curious dog sniffing around", "with snowflakes slowly drifting down",
)
SENTENCES: tuple[str, ...] = (
    "The lettering is sharp, evenly spaced and easy to read.",
    "Soft shadows and a shallow depth of field keep the focus on the text.",
    "The scene feels calm and inviting, captured in natural light.",
    "A few passersby glance at it as they walk past.",
    "Every letter is clearly legible against the background.",
    "The colors are vivid and every detail is crisp.",
    "Warm afternoon light falls across the surface, highlighting its texture.",
    "Raindrops glisten on the surface, but the words remain perfectly clear.",
    "The composition is centered, with the text as the clear focal point.",
    "Dust motes drift through a beam of light nearby.",
    "A curious cat sits just beside it, looking at the camera.",
    "The image has the polished look of a professional product photograph.",
    "The atmosphere is cheerful, with a touch of whimsy.",
    "Fine textures of wood, paint and metal are visible up close.",
)


class _Draw:
    """Draws built only on ``random.Random.random()`` (the one method with a guaranteed sequence)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def index(self, n: int) -> int:
        return min(int(self._rng.random() * n), n - 1)

    def pick(self, seq: Sequence[str]) -> str:
        return seq[self.index(len(seq))]

    def weighted(self, weights: dict) -> object:
        x = self._rng.random() * sum(weights.values())
        for key, w in weights.items():
            x -= w
            if x < 0:
                return key
        return key

    def chance(self, p: float) -> bool:
        return self._rng.random() < p

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + self.index(hi - lo + 1)


def load_words(path: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """The word list: ``category<TAB>Word`` lines, categories ``WORD_CATEGORIES``."""
    path = Path(path) if path is not None else DATA_DIR / WORDS_FILE
    words: dict[str, list[str]] = {c: [] for c in WORD_CATEGORIES}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        cat, sep, word = line.partition("\t")
        if not sep or cat not in words or not word or set(word) - TARGET_ALPHABET or " " in word:
            raise ValueError(f"{path}: line {n}: expected 'category<TAB>word' with a category in "
                             f"{WORD_CATEGORIES} and one ASCII word, got {line!r}")
        words[cat].append(word)
    empty = [c for c, ws in words.items() if not ws]
    if empty:
        raise ValueError(f"{path}: no words for categories {empty}")
    return {c: tuple(ws) for c, ws in words.items()}


def _number(draw: _Draw) -> str:
    r = draw.index(10)
    if r < 5:
        return str(draw.integer(1, 20))
    if r < 8:
        return str(draw.integer(21, 199))
    return str(draw.integer(200, 999))


def _phrase(draw: _Draw, words: dict[str, tuple[str, ...]]) -> str:
    """One target phrase: a pattern, its slots filled, then one casing style."""
    count = draw.weighted(WORD_COUNT_WEIGHTS)
    pattern = draw.weighted(dict(PATTERNS[count]))
    tokens: list[tuple[str, bool]] = []  # (text, keeps its capital: a name)
    for raw in pattern.split(" "):
        head, brace, rest = raw.partition("{")
        if not brace:
            tokens.append((raw, False))
            continue
        slot, _, tail = rest.partition("}")
        if slot in words:
            value, proper = draw.pick(words[slot]), slot == "name"
        elif slot == "num":
            value, proper = _number(draw), False
        elif slot == "small":
            value, proper = str(draw.integer(2, 12)), False
        elif slot == "year":
            value, proper = str(draw.integer(1890, 2099)), False
        elif slot == "pct":
            value, proper = f"{5 * draw.integer(1, 19)}%", False
        elif slot == "price":
            value, proper = f"${draw.integer(1, 99)}", False
        else:  # pragma: no cover - a typo in PATTERNS
            raise KeyError(slot)
        tokens.append((head + value + tail, proper))
    style = draw.weighted(CASE_WEIGHTS)
    out = []
    for i, (tok, proper) in enumerate(tokens):
        low = tok.lower()
        if style == "upper":
            out.append(tok.upper())
        elif style == "lower" and not proper:
            out.append(low)
        elif style == "sentence" and not proper:
            out.append(low[:1].upper() + low[1:] if i == 0 else low)
        elif style == "title" and not proper:
            out.append(low if i > 0 and low in SMALL_WORDS else low[:1].upper() + low[1:])
        else:
            out.append(tok)
    return " ".join(out)


def _scene(draw: _Draw, target: str) -> str:
    kind = draw.pick(tuple(OBJECT_KINDS))
    objects, links = OBJECT_KINDS[kind]
    opener, obj = draw.pick(OPENERS), draw.pick(objects)
    head = opener + obj if opener else obj[:1].upper() + obj[1:]
    text = f'{head} {draw.pick(links)} "{target}" {draw.pick(STYLES)}, {draw.pick(CONTEXTS)}'
    if draw.chance(0.6):
        text += f", {draw.pick(DETAILS)}"
    text += "."
    if draw.chance(0.8):
        text += " " + draw.pick(SENTENCES)
    return text


def shipped_test_targets(path: str | Path | None = None) -> set[str]:
    """Normalised targets of the shipped test prompts (``data/test.txt``)."""
    path = Path(path) if path is not None else DATA_DIR / "test.txt"
    return {normalize(extract_target(p)) for p in read_prompt_lines(path)}


def generate_train_prompts(n: int = TRAIN_N, seed: int = TRAIN_SEED, *,
                           words: dict[str, tuple[str, ...]] | None = None,
                           exclude_targets: set[str] | None = None) -> list[str]:
    """``n`` prompts with distinct targets, none of them (normalised) in ``exclude_targets``
    (default: the test set's)."""
    words = load_words() if words is None else words
    banned = set(shipped_test_targets() if exclude_targets is None else exclude_targets)
    draw = _Draw(seed)
    prompts: list[str] = []
    tries = 0
    while len(prompts) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct OCR targets (got {len(prompts)}); the word list is "
                               f"too small for n={n}")
        target = _phrase(draw, words)
        key = normalize(target)
        if not MIN_TARGET_CHARS <= len(target) <= MAX_TARGET_CHARS or key in banned:
            continue
        banned.add(key)
        prompts.append(_scene(draw, target))
    return prompts


def generate_train_text(n: int = TRAIN_N, seed: int = TRAIN_SEED) -> str:
    """The exact bytes of ``data/train.txt`` (one prompt per line, final newline)."""
    return "\n".join(generate_train_prompts(n, seed)) + "\n"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_train_file(path: str | Path | None = None, n: int = TRAIN_N, seed: int = TRAIN_SEED) -> Path:
    """Write the generated prompts atomically (temp file + rename)."""
    path = Path(path) if path is not None else DATA_DIR / TRAIN_FILE
    atomic_write(path, generate_train_text(n, seed), mode=0o644)  # a shipped data file: readable by all
    return path


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=f"OCR training-prompt generator {GENERATOR_VERSION}")
    ap.add_argument("--write", action="store_true", help=f"(re)write data/{TRAIN_FILE}")
    ap.add_argument("--check", action="store_true", help=f"regenerate and compare with data/{TRAIN_FILE}")
    args = ap.parse_args(argv)
    text = generate_train_text()
    print(f"{GENERATOR_VERSION}: n={TRAIN_N} seed={TRAIN_SEED} sha256={sha256_text(text)} "
          f"words sha256={hashlib.sha256((DATA_DIR / WORDS_FILE).read_bytes()).hexdigest()}")
    if args.write:
        print(f"wrote {write_train_file()}")
    if args.check:
        same = (DATA_DIR / TRAIN_FILE).read_bytes() == text.encode("utf-8")
        print("identical" if same else "DIFFERENT")
        raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
