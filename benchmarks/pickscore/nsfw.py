"""Flag NSFW-looking captions so UIs (the leaderboard gallery) can hide them.

Pick-a-Pic captions are raw user prompts and include sexual / explicit text.  This is a
deliberately simple, conservative *display* filter: a caption is flagged when it contains
(case-insensitively, as a whole word; trailing plural/inflection letters allowed where
marked) one of the words in :data:`NSFW_WORDS`.  It is not a classifier, never affects
scores, and will both over- and under-flag.  Extend the list rather than special-casing.
"""

from __future__ import annotations

import re

#: word stems; a trailing ``*`` means "any word starting with this stem"
NSFW_WORDS: tuple[str, ...] = (
    "nsfw", "nude", "nudes", "nudity", "naked", "topless", "bottomless", "undressed", "undressing",
    "porn*", "xxx", "hentai", "ecchi", "rule34", "onlyfans", "erotic*", "lewd", "sex", "sexy", "sexual*",
    "seductive*", "lingerie", "fetish*", "bdsm", "bondage", "orgasm*", "masturbat*", "cum", "cumshot*",
    "boob*", "breasts", "tits", "titties", "nipple*", "areola*", "cleavage", "genital*", "penis*", "vagina*",
    "pussy", "dick", "dicks", "buttocks", "ass", "anus", "thong", "playboy", "stripper*", "striptease",
    "panties", "underwear", "bra", "bras", "bikini*", "see-through", "sheer", "sensual*", "unclad",
    "busty", "thicc", "butt", "butts", "horny", "milf", "hooker*", "prostitut*", "gore", "gory", "decapitat*", "dismember*",
)


def _compile(words: tuple[str, ...]) -> re.Pattern[str]:
    parts = [re.escape(w[:-1]) + r"\w*" if w.endswith("*") else re.escape(w) for w in words]
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(parts) + r")(?![A-Za-z0-9])", re.IGNORECASE)


NSFW_RE = _compile(NSFW_WORDS)


def is_nsfw(caption: str) -> bool:
    """True when the caption contains a word from :data:`NSFW_WORDS` (display filter only)."""
    return bool(caption) and NSFW_RE.search(caption) is not None
