"""Secret redaction: what the platform may show or store of a config (docs/runner.md, "Secrets").

Configs carry secrets in three shapes, and each is recognised by structure, not by guessing
at values:

* **Secret-looking names** (`is_secret_name`): a key of a mapping (`reward_kwargs.ocr.api_key`), a
  shell assignment (`export HF_TOKEN=...`, `hf_token=...`), a flag (`--token VALUE`,
  `--password=VALUE`), a YAML/JSON pair inside a string (`token: x`, `"token": "x"`) or a URL query
  parameter (`?password=x`, `&sslpassword=x`). A name is split into components at non-alphanumerics
  and camelCase humps; it is secret-looking when a component
  - ends with token, secret(s), password(s), passwd, passphrase, credential(s), apikey, accesskey,
    secretkey or privatekey (`HF_TOKEN`, `hftoken`, `sslpassword`, `AccessToken`), or
  - starts with secret, password, passwd or credential (`secretkey`, `password_file`), or
  - IS key, pass, auth or authorization (`api_key`, `MY_PASS`, `auth`).
  Deliberately not secret: `tokens`/`max_tokens`/`tokenizer` (plural or prefix of "token"), `keys`,
  `monkey`, `keep`, `bypass`, `passes`, `author`, `PWD` (a directory). The accepted false positives
  are names with a bare `key`/`pass`/`auth` component, e.g. `key_frames`, `--no-auth VALUE`: their
  values are hidden too, which costs readability, never a leak.
* **Quoted values** are hidden whole, quotes included (`export HF_TOKEN="A B"` -> `HF_TOKEN=***`):
  strings are split into shell words first (quotes and backslashes respected), so a quoted value with
  spaces is one value.
* **URL credentials**: the userinfo of any `scheme://` URL, whatever characters it holds. A password
  may contain `/`, `@`, `?` or `#` unescaped (`postgresql://u:pa/SECRET2@host/db`, `u:p@ss@host`),
  which makes both `urllib.parse` and SQLAlchemy's `make_url` misplace it; so in `user:password@...`
  the password runs to the LAST `@` of the URL (an `@` further right, in a path or a query, hides
  more than needed, never less). The user name stays visible. A userinfo without `:` is hidden whole
  (GitHub-style tokens are sent as the user name) unless a `/`, `?` or `#` precedes its `@` (then
  the `@` is in a path: `s3://bucket/key@v2`). The query and fragment are split as
  `urllib.parse.urlsplit` does (under either reading of the userinfo), and values of secret-looking
  parameters are hidden.

Values are replaced by `***`. `secret_values` returns what was hidden, so text that is not a config
(the capsule's `git diff`) can be scrubbed of the same values.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any
from urllib.parse import unquote

REDACTED = "***"
MIN_SCRUB_LEN = 3  # shorter hidden values are not scrubbed from free text (they would mangle it)

_SECRET_COMPONENT = re.compile(
    r"[a-z0-9]*(?:token|secrets?|passwords?|passwd|passphrase|credentials?|apikey|accesskey|secretkey|privatekey)"
    r"|(?:secret|password|passwd|credential)[a-z0-9]*"
    r"|key|pass|auth|authorization"
)
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_ASSIGNMENT = re.compile(r"(-{0,2})([A-Za-z_][A-Za-z0-9_.-]*)=")  # NAME=, --name=
_FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9_.-]*")
_PAIR = re.compile(  # name: value / "name": "value" inside free text (YAML, JSON)
    r"""(?P<q>["']?)(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)(?P=q)\s*:[ \t]*(?P<value>"(?:[^"\\]|\\.)*"?|'[^']*'?|[^\s,}\]]+)"""
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # locates URLs; parsing is _url_secret_spans
_OPERATORS = set(";|&<>()`")


def is_secret_name(name: str) -> bool:
    """True for names whose value is a secret (rules in the module docstring)."""
    spaced = _CAMEL_HUMP.sub("_", name).lower()
    return any(_SECRET_COMPONENT.fullmatch(part) for part in re.split(r"[^a-z0-9]+", spaced) if part)


# ------------------------------------------------------------------------- text ----
def _shell_words(text: str) -> list[tuple[int, int]]:
    """Spans of shell words: quotes and backslash escapes respected, operators split words."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start, quote = i, None
        while i < n:
            c = text[i]
            if quote:
                if c == "\\" and quote == '"' and i + 1 < n:
                    i += 2
                    continue
                if c == quote:
                    quote = None
                i += 1
                continue
            if c in "'\"":
                quote = c
            elif c == "\\" and i + 1 < n:
                i += 1
            elif c.isspace():
                break
            elif c in _OPERATORS:
                if i == start:
                    i += 1  # the operator is its own word
                break
            i += 1
        spans.append((start, i))
    return spans


def _url_secret_spans(url: str) -> list[tuple[int, int]]:
    """Spans (offsets into `url`) of the credentials of one `scheme://...` URL."""
    head = url.index("://") + 3
    rest = url[head:]
    spans: list[tuple[int, int]] = []
    host_starts = {0}
    first_at = rest.find("@")
    if first_at >= 0:
        if ":" in rest[:first_at]:
            # user:password, and the password may hold '@', '/', '?' or '#': it ends at the LAST '@'
            # (an '@' further right, in a path or query, only hides more than needed)
            last_at = rest.rfind("@")
            spans.append((head + rest.index(":") + 1, head + last_at))
            host_starts = {first_at + 1, last_at + 1}
        elif not any(c in rest[:first_at] for c in "/?#"):  # a token as user name; else '@' in a path
            spans.append((head, head + first_at))
            host_starts = {first_at + 1}
    for host_start in host_starts:  # query and fragment after either reading of the userinfo
        spans += _query_secret_spans(rest, host_start, head)
    return spans


def _query_secret_spans(rest: str, host_start: int, head: int) -> list[tuple[int, int]]:
    """Values of secret-looking query/fragment parameters, split as urllib.parse.urlsplit does
    (fragment at the first '#', query at the first '?' before it)."""
    after = rest[host_start:]
    base = head + host_start
    hash_at = after.find("#")
    query_at = after.find("?", 0, hash_at if hash_at >= 0 else len(after))
    sections = []
    if query_at >= 0:
        sections.append((query_at + 1, hash_at if hash_at >= 0 else len(after)))
    if hash_at >= 0:
        sections.append((hash_at + 1, len(after)))  # OAuth-style '#access_token=...'
    spans = []
    for s, e in sections:
        pos = s
        for pair in re.split(r"[&;]", after[s:e]):
            name, eq, _value = pair.partition("=")
            if eq and is_secret_name(unquote(name)):
                spans.append((base + pos + len(name) + 1, base + pos + len(pair)))
            pos += len(pair) + 1
    return spans


def _text_secret_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    flag_pending = False
    for s, e in _shell_words(text):
        word = text[s:e]
        if flag_pending:
            flag_pending = False
            if not word.startswith("-") and word[0] not in _OPERATORS:
                spans.append((s, e))  # the value of `--token VALUE`
                continue
        lead = len(word) - len(word.lstrip("'\""))
        m = _ASSIGNMENT.match(word, lead)
        if m and is_secret_name(m[2]):
            spans.append((s + m.end(), e))
            continue
        if _FLAG.fullmatch(word) and is_secret_name(word.lstrip("-")):
            flag_pending = True
            continue
        for u in _SCHEME.finditer(word):
            url = word[u.start():].rstrip("'\"")
            spans += [(s + u.start() + a, s + u.start() + b) for a, b in _url_secret_spans(url)]
    for m in _PAIR.finditer(text):
        if is_secret_name(m["name"]) and m["value"] != REDACTED:
            spans.append(m.span("value"))
    return spans


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(sp for sp in spans if sp[1] > sp[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def redact_text(text: str) -> tuple[str, list[str]]:
    """(text with every secret replaced by ***, the hidden substrings)."""
    spans = [(s, e) for s, e in _merge(_text_secret_spans(text)) if text[s:e] != REDACTED]
    hidden = [text[s:e] for s, e in spans]
    for s, e in reversed(spans):
        text = text[:s] + REDACTED + text[e:]
    return text, hidden


def redact_url(url: str) -> str:
    """A URL fit to print: userinfo password (or token user) and secret query values hidden."""
    return redact_text(url)[0]


# ------------------------------------------------------------------ structures ----
def _collect(value: Any, hidden: list[str] | None) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and is_secret_name(k) and v is not None and not isinstance(v, bool):
                if hidden is not None:
                    hidden.extend(_leaves(v))
                out[k] = REDACTED
            else:
                out[k] = _collect(v, hidden)
        return out
    if isinstance(value, list | tuple):
        return [_collect(v, hidden) for v in value]
    if isinstance(value, str):
        text, found = redact_text(value)
        if hidden is not None:
            hidden.extend(found)
        return text
    return value


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _leaves(v)]
    return [] if value is None or isinstance(value, bool) else [str(value)]


def redact(value: Any) -> Any:
    """A copy of `value` (mappings, lists, strings) with every secret replaced by ***."""
    return _collect(value, None)


def secret_values(value: Any) -> set[str]:
    """Every secret `redact(value)` hides, also unquoted and split at whitespace (a YAML file or a
    diff may quote or escape it differently); values shorter than MIN_SCRUB_LEN are left out."""
    hidden: list[str] = []
    _collect(value, hidden)
    out: set[str] = set()
    for h in hidden:
        inner = h.strip("'\"")
        for candidate in (h, inner, *re.split(r"\s+", inner)):
            candidate = candidate.strip("'\"\\")
            if len(candidate) >= MIN_SCRUB_LEN and candidate != REDACTED:
                out.add(candidate)
    return out


def scrub(text: str, secrets: set[str]) -> str:
    """Free text (logs, diffs) with the known `secrets` and secret-looking assignments hidden."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return "".join(redact_text(line)[0] for line in text.splitlines(keepends=True))


def setup_hash(lines: list[str] | tuple[str, ...]) -> str | None:
    """Identifies the exact `launcher.setup` lines (compare two runs) without storing them. scrypt,
    slow on purpose: a plain hash of a line holding a short password would be cheap to brute-force."""
    if not lines:
        return None

    raw = "\n".join(lines).encode()
    return hashlib.scrypt(raw, salt=b"awm-platform/launcher.setup", n=2**14, r=8, p=1, dklen=16).hex()


def quiet_mlflow_links(tracking_uri: str | None) -> None:
    """MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends over HTTP, credentials
    included: switch that off (for this process) when the URI holds any. Call before MlflowClient()."""
    if tracking_uri and redact_url(tracking_uri) != tracking_uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
