"""The `sweep:` section of an experiment config: search space, sampler, pruner, objective.

Kept free of optuna imports (the CLI validates configs without paying for optuna);
`awm_platform.sweeps.optuna_bridge` turns these models into optuna objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from awm_platform.dotted import get_dotted, set_dotted
from trainers.awm.config import TrainerConfig, method_switched


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ParamSpec(_Spec):
    """One searched key. `type: float|int` need low/high; `categorical` needs choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical parameters need a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("categorical parameters take 'choices', not low/high")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} parameters need 'low' and 'high'")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise ValueError("log scale and step cannot be combined")
            if self.choices is not None:
                raise ValueError(f"{self.type} parameters take low/high, not choices")
        return self

    def boundary_values(self) -> list[Any]:
        """Values that must each produce a valid experiment config."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SamplerSpec(_Spec):
    name: Literal["tpe", "random", "grid", "cmaes", "nsga2"] = "tpe"
    seed: int = Field(0, ge=0, description="the study seed: seeds the sampler and every trial's cfg.seed")
    n_startup_trials: int = Field(4, ge=0, description="random trials before TPE/CMA-ES model the space")
    population_size: int = Field(8, ge=2, description="NSGA-II population (optuna's default 50 is too big for sweeps)")


class PrunerSpec(_Spec):
    name: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class ObjectiveSpec(_Spec):
    metric: str = Field(..., min_length=1, description="a metric the trainer's evaluation logs, e.g. eval/jpeg_compressibility")
    direction: Literal["maximize", "minimize"] = "maximize"
    final: Literal["last", "best"] = Field(
        "last", description="the trial's objective: the metric's last logged value (default) or its best one")


class SweepSpec(_Spec):
    params: dict[str, ParamSpec] = Field(..., min_length=1, description="dotted experiment key -> distribution")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    n_trials: int = Field(8, ge=1)
    parallelism: int = Field(2, ge=1, description="trials in flight")
    objective: list[ObjectiveSpec] = Field(..., min_length=1)
    budget_gpu_hours: float | None = Field(None, gt=0)
    max_retries: int = Field(2, ge=0, description="retries of a trial whose process died")
    storage: str | None = Field(None, description="Optuna storage URL; None = sqlite:///$AWM_HOME/optuna.db")
    journal_path: str | None = Field(None, description="use a JournalFileBackend at this path (NFS-only clusters)")
    heartbeat_interval_s: int = Field(
        10, ge=1, description="how often the orchestrator records that it is alive (study user attr)")
    grace_period_s: int = Field(
        60, ge=1, description="an orchestrator silent this long is dead: resume/stop may take over")
    poll_interval_s: float = Field(2.0, gt=0, le=300, description="how often in-flight trials are polled")

    @model_validator(mode="before")
    @classmethod
    def _single_objective(cls, data: Any) -> Any:
        # `objective: {metric: ..., direction: ...}` is the common single-objective case
        if isinstance(data, dict) and isinstance(data.get("objective"), dict):
            data = {**data, "objective": [data["objective"]]}
        return data

    @model_validator(mode="after")
    def _combinations(self) -> SweepSpec:
        if self.storage and self.journal_path:
            raise ValueError("set either sweep.storage (RDB URL) or sweep.journal_path, not both")
        if len(self.objective) > 1 and self.sampler.name not in ("nsga2", "random", "grid"):
            raise ValueError(
                f"{len(self.objective)} objectives need a multi-objective sampler (nsga2, random or grid), "
                f"not '{self.sampler.name}'")
        if len(self.objective) > 1 and self.pruner.name != "none":
            raise ValueError("optuna cannot prune multi-objective studies: set sweep.pruner.name: none")
        if self.sampler.name == "grid" and any(p.type == "float" and p.step is None for p in self.params.values()):
            raise ValueError("the grid sampler needs 'step' on float parameters (or categorical choices)")
        return self

    def validate_against(self, cfg: TrainerConfig) -> None:
        """Every searched key must exist in the experiment config `cfg` (the config holding this
        section), and the ends of every range must satisfy that key's own constraints (e.g.
        train.beta >= 0), checked by validating a copy of `cfg` with the value set."""
        base = cfg.model_dump(mode="json", exclude={"sweep"})
        evaluated = set(cfg.eval.rewards or cfg.reward_fn)
        for obj in self.objective:
            prefix, _, reward = obj.metric.partition("/")
            if prefix in ("eval", "eval_ema") and reward not in evaluated:
                raise ValueError(
                    f"sweep.objective: '{obj.metric}' is never logged: the evaluation computes "
                    f"{sorted(evaluated)} (eval.rewards or reward_fn); use e.g. '{prefix}/{min(evaluated)}'")
            if prefix == "eval_ema" and not (cfg.eval.ema and cfg.train.ema):
                raise ValueError(f"sweep.objective: '{obj.metric}' needs eval.ema and train.ema enabled")
        for key, spec in self.params.items():
            if key.startswith("sweep.") or key == "name":
                raise ValueError(f"sweep.params: '{key}' cannot be searched")
            try:
                get_dotted(base, key)
            except KeyError:
                raise ValueError(f"sweep.params: '{key}' is not a key of the experiment config") from None
            for value in spec.boundary_values():
                trial = set_dotted(method_switched(base, value) if key == "method" else base, key, value)
                try:
                    type(cfg).model_validate(trial)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(x) for x in first["loc"])
                    why = first["msg"].removeprefix("Value error, ")
                    raise ValueError(f"sweep.params.{key}: value {value!r} violates the key's own constraint "
                                     f"({where}: {why})") from None

