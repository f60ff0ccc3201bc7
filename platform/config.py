"""The experiment spec: the trainer's config plus the platform's sections, YAML loading with
dotted overrides, validation messages, redaction and hashing.

Design rules (see docs/contracts.md, "Config"):
- What the trainer reads (upstream AWM key names, `lora`, `eval`) and the derived topology are
  the trainer's own (`trainers.awm.config`); `ExperimentConfig` adds the platform's sections
  `launcher`, `tracking`, `storage`, `sweep` and passes the launcher's world size explicitly.
- Every error names the file, the dotted key, the reason (and the closest valid key for
  unknown keys, the allowed range for out-of-range values).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator, model_validator

from awm_platform.dotted import NotASectionError, set_dotted
from awm_platform.evals.spec import PlatformEvalConfig
from awm_platform.paths import validate_run_name
from awm_platform.redaction import redact, setup_hash
from awm_platform.sweeps.spec import SweepSpec
from trainers.awm.config import (
    ConfigError,
    ConfigSection,
    Topology,
    TrainerConfig,
    derive_topology,
    method_switched,
)

TAG_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


# ------------------------------------------------------------------------ platform ----
class LauncherConfig(ConfigSection):
    cluster: Literal["local", "debug", "slurm"] = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(1, ge=1, le=1024)
    gpus_per_node: int = Field(1, ge=1, le=64, description="processes per node (GPUs; CPU processes locally)")
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int = Field(60, ge=1, description="wall-clock limit in minutes")
    constraint: str | None = None
    extra_sbatch: list[str] = Field(default_factory=list, description="extra '#SBATCH' lines, without the prefix")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job")
    signal_delay_s: int = Field(120, ge=1, description="SIGUSR2 this long before the time limit")
    max_requeues: int = Field(3, ge=0, description="time-outs survived by requeueing (submitit's max_num_timeout); "
                              "preemptions are always requeued and not counted (docs/runner.md)")
    array_parallelism: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _signal_before_limit(self) -> LauncherConfig:
        # SLURM may deliver --signal up to 60 s early; a delay >= the limit fires at start-up
        if self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"launcher.signal_delay_s={self.signal_delay_s} must be shorter than the time limit "
                f"(launcher.time_min={self.time_min} min = {self.time_min * 60} s)")
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class TrackingConfig(ConfigSection):
    uri: str | None = Field(None, description="MLflow tracking URI; None = $MLFLOW_TRACKING_URI or embedded sqlite")
    experiment: str = Field("awm", min_length=1)
    log_lora: Literal["artifact", "path"] = "path"
    parent_run_id: str | None = None


class StorageConfig(ConfigSection):
    url: str | None = Field(None, description="platform DB URL; None = sqlite:///$AWM_HOME/awm.db")


# -------------------------------------------------------------------- experiment ----
class ExperimentConfig(TrainerConfig):
    """What the trainer reads (`TrainerConfig`) plus how the platform launches, tracks and stores
    the run, and the optional sweep. Field order (and so every dump) is the trainer's keys first."""

    eval: PlatformEvalConfig = Field(default_factory=PlatformEvalConfig)  # + the evaluation service's keys
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sweep: SweepSpec | None = None
    tags: list[str] = Field(default_factory=list, description="free labels (1-64 characters of A-Z a-z 0-9 _ . : -): "
                            "the leaderboard filters on them; MLflow tag awm.tags")

    @field_validator("name")
    @classmethod
    def _run_name(cls, v: str) -> str:
        return validate_run_name(v)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for tag in v:
            if not TAG_RE.fullmatch(tag):
                raise ValueError(f"tag {tag!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        return list(dict.fromkeys(v))  # a repeated label is one label

    @model_validator(mode="after")
    def _sweep_fits(self) -> ExperimentConfig:
        if self.sweep is not None:
            self.sweep.validate_against(self)
        return self

    def topology(self, world_size: int | None = None) -> Topology:
        """The derived topology at `world_size` processes (default: the launcher's)."""
        return derive_topology(self, self.launcher.world_size if world_size is None else world_size)

    # what the trainer records: the platform's redacted view, so it matches the store and the capsule
    def resolved(self, world_size: int) -> dict[str, Any]:
        return resolved_config(self, world_size)

    def fingerprint(self) -> str:
        return config_hash(self)


# ------------------------------------------------------------------------ loading ----
def _yaml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                lines[key] = k.start_mark.line + 1
                walk(v, key)

    if root is not None:
        walk(root, ())
    return lines


def _valid_keys_at(loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = ExperimentConfig
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if model is None:
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        if getattr(ann, "__origin__", None) is dict:  # dict[str, Section]: the next part is a free key
            if parts:
                parts.pop(0)
            ann = ann.__args__[-1]
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None) \
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)) else ann
    if model is None:
        return []
    keys = list(model.model_fields)
    for f in model.model_fields.values():
        if isinstance(f.validation_alias, AliasChoices):
            keys += [c for c in f.validation_alias.choices if isinstance(c, str)]
    return sorted(set(keys))


def _top_level_aliases() -> dict[str, str]:
    """Every accepted spelling of a top-level key -> its field name (`run_name` -> `name`)."""
    out: dict[str, str] = {}
    for field_name, f in ExperimentConfig.model_fields.items():
        out[field_name] = field_name
        if isinstance(f.validation_alias, AliasChoices):
            out.update({c: field_name for c in f.validation_alias.choices if isinstance(c, str)})
    return out


_RANGE_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _format_errors(err: ValidationError, source: str, key_lines: dict[tuple[str, ...], int]) -> str:
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc) or "<root>"
        where = source
        for n in range(len(loc), 0, -1):
            if loc[:n] in key_lines:
                where = f"{source}:{key_lines[loc[:n]]}"
                break
        if e["type"] == "extra_forbidden":
            valid = _valid_keys_at(e["loc"])
            canonical = _top_level_aliases().get(loc[-1]) if len(loc) == 1 else None
            if canonical is not None:  # a second spelling of a key that is already set (name + run_name)
                spellings = sorted(k for k, v in _top_level_aliases().items() if v == canonical)
                out.append(f"{where}: '{dotted}' and another spelling of the same key are both set "
                           f"({' / '.join(spellings)}); keep one")
                continue
            close = difflib.get_close_matches(loc[-1], [k for k in valid if k != loc[-1]], n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
            out.append(f"{where}: unknown key '{dotted}'{hint} (valid keys here: {', '.join(valid)})")
        elif e["type"] == "finite_number":
            out.append(f"{where}: '{dotted}' must be a finite number, got {e.get('input')!r}")
        elif e["type"] in _RANGE_WORDS:
            bound = next(iter(e.get("ctx", {}).values()), "?")
            out.append(f"{where}: '{dotted}' must be {_RANGE_WORDS[e['type']]} {bound}, got {e.get('input')!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f", got {e.get('input')!r}" if e["type"] not in ("value_error", "missing") else ""
            out.append(f"{where}: '{dotted}': {msg}{got}" if loc else f"{where}: {msg}")
    return "invalid config:\n  " + "\n  ".join(out)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.beta=0.003` -> (["train", "beta"], 0.003). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like dotted.key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`data` with every `dotted.key=value` override applied (a copy; `data` is left as it is)."""
    data = copy.deepcopy(data)
    aliases = _top_level_aliases()
    for item in overrides:
        parts, value = parse_override(item)
        canonical = aliases.get(parts[0])
        if canonical is not None:  # `--set run_name=x` overrides `name:` of the file (one key, two spellings)
            for spelling in [k for k, v in aliases.items() if v == canonical and k != canonical]:
                if spelling in data and canonical not in data:
                    data[canonical] = data.pop(spelling)
            parts[0] = canonical
        if parts == ["method"] and isinstance(value, str):
            # switching a config's method (`--set method=flow_grpo` on an AWM config): the keys only its
            # method reads are dropped and the new method's defaults apply, as in a sweep over `method`
            data = method_switched(data, value)
        try:
            data = set_dotted(data, parts, value)
        except NotASectionError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
    return data


# A config FILE must state these: their defaults (SD3.5-M, a JPEG reward) are no sensible guess,
# and an empty file would otherwise validate and launch 1,728 SD3.5-M images per update.
# Programmatic configs (`config_from_dict`, job specs) keep the defaults.
REQUIRED_KEYS: dict[str, str] = {
    "pretrained.model": "a local diffusers pipeline folder or a hub id",
    "reward_fn": "e.g. reward_fn: {jpeg_compressibility: 1.0}",
}


def _missing_required(data: dict[str, Any], required: dict[str, str]) -> list[str]:
    aliases = _top_level_aliases()
    missing = []
    for dotted, hint in required.items():
        head, *rest = dotted.split(".")
        node: Any = next((data[k] for k, v in aliases.items() if v == head and k in data), None)
        for part in rest:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(f"missing required key '{dotted}' ({hint})")
    return missing


def config_from_dict(data: dict[str, Any], *, source: str = "<config>", text: str = "",
                     world_size: int | None = None, required: dict[str, str] | None = None) -> ExperimentConfig:
    missing = [f"{source}: {m}" for m in _missing_required(data, required or {})]
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, _yaml_key_lines(text)) + "".join(f"\n  {m}" for m in missing)) \
            from None
    if missing:
        raise ConfigError("invalid config:\n  " + "\n  ".join(missing))
    cfg.topology(world_size)  # impossible combinations fail before anything is submitted
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                world_size: int | None = None) -> ExperimentConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; give the config's YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "is this a YAML config?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_dict(data, source=str(path), text=text, world_size=world_size, required=REQUIRED_KEYS)


# --------------------------------------------------------------- resolve and hash ----
# Secret rules live in awm_platform.redaction (docs/runner.md, "Secrets").


def resolved_config(cfg: ExperimentConfig, world_size: int | None = None) -> dict[str, Any]:
    """The config as it will run: every default filled in, derived values, secrets redacted."""
    data = redact(cfg.model_dump(mode="json"))
    data["derived"] = cfg.topology(world_size).model_dump()
    # the raw setup lines stay in the 0600 job files; a hash tells runs with different ones apart
    data["derived"]["setup_hash"] = setup_hash(cfg.launcher.setup)
    return data


def config_hash(cfg: ExperimentConfig) -> str:
    canonical = json.dumps(redact(cfg.model_dump(mode="json")), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'beta': 1}} -> {'train.beta': 1} (lists and None kept as values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out

