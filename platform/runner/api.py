"""submit_run / rerun: build a job from a validated config and submit it through submitit."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from awm_platform import paths
from awm_platform.config import apply_overrides, config_from_dict, config_hash, resolved_config
from awm_platform.runner import snapshot
from awm_platform.runner.backends import CLUSTERS, backend_for
from awm_platform.runner.capsule import git_info, write_capsule
from awm_platform.runner.job import TrainJob
from awm_platform.runner.launch import launch_command
from awm_platform.runner.lifecycle import RunEvent, apply_event, next_status
from awm_platform.runner.proc import fault_point
from awm_platform.runner.spec import SETUP_FILE, JobSpec
from awm_platform.store import Store
from awm_platform.store.store import StoreError


class SubmitError(RuntimeError):
    pass


@dataclass
class SubmittedRun:
    name: str
    run_dir: Path
    job_id: str | None
    cluster: str
    sbatch_script: str | None
    launch_command: list[str] = field(default_factory=list)
    job: Any = None  # the submitit Job (None on dry-run); not part of the contract


def resolve_cluster(cfg: Any, cluster: str | None) -> str:
    c = cluster or cfg.launcher.cluster
    if c not in CLUSTERS:
        raise SubmitError(f"unknown cluster {c!r}: expected one of {', '.join(CLUSTERS)}")
    return c


def tracking_target(cfg: Any) -> tuple[str, str | None]:
    """(tracking URI, artifact root for a new experiment). None -> $MLFLOW_TRACKING_URI ->
    the embedded `sqlite:///$AWM_HOME/mlflow.db` + `$AWM_HOME/mlartifacts`."""

    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        root = None
        if uri.startswith("sqlite:"):  # a local DB: keep artifacts next to the platform state
            root = paths.default_mlflow_artifact_root().as_uri()
        return uri, root
    return paths.default_mlflow_tracking_uri(), paths.default_mlflow_artifact_root().as_uri()


def submit_run(
    cfg: Any,
    *,
    cluster: str | None = None,
    store: Any = None,
    dry_run: bool = False,
    sweep_name: str | None = None,
    trial_number: int | None = None,
    mlflow_parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    wait_debug: bool = True,
) -> SubmittedRun:
    """Create the store row (PENDING), write the capsule, submit through submitit.

    `cluster` overrides `cfg.launcher.cluster` and is always passed to submitit explicitly.
    With `dry_run` nothing is written or submitted; the sbatch script (SLURM) and the launch
    command are returned for display. The debug cluster runs the job in-process, so
    `submit_run` returns after it finished (unless `wait_debug=False`)."""

    cluster = resolve_cluster(cfg, cluster)
    backend = backend_for(cluster)
    cfg.topology()  # fail before anything is written (a dry run too)
    backend.validate(cfg)
    # not paths.run_dir(): a dry run must not create $AWM_HOME
    run_dir = paths.awm_home(create=False) / "runs" / paths.validate_run_name(cfg.name)
    cmd = launch_command(cfg, run_dir)
    sbatch = backend.preview(cfg, run_dir)
    if dry_run:
        return SubmittedRun(cfg.name, run_dir, None, cluster, sbatch, cmd)


    own_store = store is None
    store = store or Store.for_config(cfg)
    try:
        _prepare_run(store, cfg, run_dir, cluster, launch_cmd=cmd, sbatch=sbatch, sweep_name=sweep_name,
                     trial_number=trial_number, parent_run_id=mlflow_parent_run_id, extra_tags=extra_tags)
        try:
            job = _submit(cfg, cluster, run_dir)
        except Exception as exc:
            _unprepare_run(store, cfg.name, run_dir)  # nothing ran: the name stays free
            rejected = backend.rejection(exc)
            if rejected is not None:
                raise SubmitError(rejected) from None
            raise
        job_id = str(job.job_id)
        fault_point("before_job_id")
        store.append_job_id(cfg.name, job_id)
        store.update_run(cfg.name, log_dir=str(run_dir / "submitit"))
        submitted = SubmittedRun(cfg.name, run_dir, job_id, cluster, sbatch, cmd, job)
        if backend.runs_in_process and wait_debug:
            job.result()  # the debug executor runs lazily, in this process
        return submitted
    finally:
        if own_store:
            store.close()


def _prepare_run(store: Any, cfg: Any, run_dir: Path, cluster: str, *, launch_cmd: list[str], sbatch: str | None,
                 sweep_name: str | None = None, trial_number: int | None = None,
                 parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None,
                 code: snapshot.CodeSnapshot | None = None) -> None:
    """Register the run (PENDING, resolved config + hash) and write what its job needs: the run
    directory, the job spec, the code snapshot (`code`, else taken now) and the reproducibility
    capsule. A failure after the row exists marks the run FAILED, so nothing is left
    half-submitted and unexplained."""

    if store.find_run(cfg.name) is not None:
        raise SubmitError(
            f"a run named {cfg.name!r} already exists; pick another name "
            f"(--set name=...) or `awm rerun {cfg.name}`"
        )
    if run_dir.exists() and any(run_dir.iterdir()):
        if store.find_run(cfg.name) is not None:  # a concurrent submit of the same name won the race
            raise SubmitError(f"a run named {cfg.name!r} already exists; pick another name (--set name=...)")
        raise SubmitError(
            f"run directory {run_dir} already exists and is not empty (left over from a "
            "deleted run?); remove it or pick another name"
        )
    git = git_info()
    code = code or snapshot.snapshot_code(paths.awm_home())
    tracking_uri, artifact_root = tracking_target(cfg)
    fault_point("before_store_row")
    tags = {
        "awm.cluster": cluster,
        "awm.code_sha256": code.sha256,
        **({"awm.sweep": sweep_name} if sweep_name else {}),
        **({"awm.trial": str(trial_number)} if trial_number is not None else {}),
        **({"awm.tags": ",".join(cfg.tags)} if cfg.tags else {}),  # the leaderboard labels
        **(extra_tags or {}),
    }
    try:
        store.create_run(
            name=cfg.name,
            config_hash=config_hash(cfg),
            resolved_config=resolved_config(cfg),
            output_dir=run_dir,
            cluster=cluster,
            git_commit=git.get("commit"),
            num_gpus=cfg.launcher.nodes * cfg.launcher.gpus_per_node,
            sweep_name=sweep_name,
            trial_number=trial_number,
        )  # born PENDING; every later status comes from the run lifecycle
    except StoreError as exc:  # the unique name: a concurrent submit of the same name won the race
        raise SubmitError(str(exc)) from None
    fault_point("after_store_row")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        JobSpec(
            name=cfg.name,
            config=cfg.model_dump(mode="json", by_alias=False),
            cluster=cluster,
            store_url=store.url,
            tracking_uri=tracking_uri,
            artifact_root=artifact_root,
            experiment=cfg.tracking.experiment,
            parent_run_id=parent_run_id or cfg.tracking.parent_run_id,
            tags=tags,
        ).save(run_dir)
        write_capsule(run_dir, cfg=cfg, cluster=cluster, launch_command=launch_cmd, sbatch=sbatch, git=git)
        snapshot.link_snapshot(run_dir, code)
    except Exception:
        _unprepare_run(store, cfg.name, run_dir)  # nothing ran: the name stays free
        raise


def _unprepare_run(store: Any, name: str, run_dir: Path) -> None:
    """Take back what `_prepare_run` wrote for a job that was never submitted (its row and run
    directory, which was absent or empty before), so a failed submission leaves nothing behind
    that blocks reusing the name."""

    with contextlib.suppress(Exception):
        store.delete_run(name)
    shutil.rmtree(run_dir, ignore_errors=True)


def _submit(cfg: Any, cluster: str, run_dir: Path) -> Any:
    if cfg.launcher.setup and not (run_dir / SETUP_FILE).exists():  # a run dir from before setup.sh
        JobSpec.load(run_dir).save(run_dir)
    return backend_for(cluster).submit(cfg, run_dir, TrainJob(str(run_dir)))


_RERUN_SUFFIX = re.compile(r"^(?P<base>.+)-r(?P<n>\d+)$")


def next_rerun_name(name: str, exists: Any) -> str:
    base = name
    m = _RERUN_SUFFIX.match(name)
    if m:
        base = m["base"]
    n = 1
    while exists(f"{base}-r{n}"):
        n += 1
    return f"{base}-r{n}"


def rerun(
    name: str,
    overrides: list[str] | None = None,
    store: Any = None,
    *,
    cluster: str | None = None,
    resume: bool = False,
) -> SubmittedRun:
    """Re-submit a run from its capsule.

    Default: a NEW run named `<name>-r<N>` (fresh run dir, fresh MLflow run) from the
    original job config plus `overrides`: reruns never overwrite history. With `resume=True`
    (no overrides allowed) a FAILED/CANCELLED/PREEMPTED run is re-submitted as the SAME run:
    same run dir, MLflow run and store row; the trainer resumes from its latest checkpoint."""

    own_store = store is None
    store = store or Store.default()
    try:
        run = store.get_run(name)
        run_dir = Path(run.output_dir)
        spec = JobSpec.load(run_dir)
        if resume:
            if overrides:
                raise SubmitError("--resume continues the same run: overrides are not allowed")
            if next_status(run.status, RunEvent.RESUBMITTED) is None:
                raise SubmitError(
                    f"run {name!r} is {run.status}; only FAILED, CANCELLED or PREEMPTED runs resume"
                )
            cfg = spec.experiment_config()
            c = resolve_cluster(cfg, cluster or spec.cluster)
            # PENDING before the job exists: its controller must not see the old terminal status
            resubmitted = apply_event(store, name, RunEvent.RESUBMITTED,
                                      fields={"ended_at": None, "error": None, "cluster": c})
            if not resubmitted.applied:  # another process moved the run meanwhile
                raise SubmitError(
                    f"run {name!r} is {resubmitted.run.status}; only FAILED, CANCELLED or PREEMPTED runs resume"
                )
            try:
                job = _submit(cfg, c, run_dir)
            except Exception as exc:
                apply_event(store, name, RunEvent.RESUBMISSION_FAILED, previous=run.status,
                            fields={"ended_at": run.ended_at, "error": f"resubmission failed: {exc}"})
                raise
            store.append_job_id(name, str(job.job_id))
            cmd = launch_command(cfg, run_dir)
            return SubmittedRun(
                name,
                run_dir,
                str(job.job_id),
                c,
                backend_for(c).preview(cfg, run_dir),
                cmd,
                job,
            )
        data = dict(spec.config)
        data["name"] = next_rerun_name(
            name, lambda n: store.find_run(n) is not None or paths.run_dir(n).exists()
        )
        cfg = config_from_dict(apply_overrides(data, overrides or []), source=f"{run_dir}/job.json")
        return submit_run(
            cfg, cluster=cluster or spec.cluster, store=store, extra_tags={"awm.rerun_of": name}
        )
    finally:
        if own_store:
            store.close()


def submit_runs(
    cfgs: list[Any], *, cluster: str | None = None, store: Any = None, sweep_name: str | None = None
) -> list[SubmittedRun]:
    """Several runs with identical launcher settings at once. On SLURM: ONE job array
    (`--array=0-<N-1>%launcher.array_parallelism`); its submitit folder is shared
    (`$AWM_HOME/arrays/<first run>`) and each run's `run_dir/submitit` links to it.
    Elsewhere: one submission per run."""

    if not cfgs:
        return []
    c = resolve_cluster(cfgs[0], cluster)
    backend = backend_for(c)
    if not backend.supports_arrays or len(cfgs) == 1:
        return [submit_run(cfg, cluster=c, store=store, sweep_name=sweep_name) for cfg in cfgs]
    launchers = {cfg.launcher.model_dump_json() for cfg in cfgs}
    if len(launchers) != 1:
        raise SubmitError("a job array needs identical `launcher` sections in every config")
    own_store = store is None
    store = store or Store.for_config(cfgs[0])
    try:
        folder = paths.awm_home() / "arrays" / cfgs[0].name
        folder.mkdir(parents=True, exist_ok=True)
        jobs_in, run_dirs = [], []
        code = snapshot.snapshot_code(paths.awm_home())  # one snapshot: the array's script names one
        for cfg in cfgs:
            run_dir = paths.run_dir(cfg.name)
            _prepare_run(store, cfg, run_dir, c, launch_cmd=launch_command(cfg, run_dir),
                         sbatch=backend.preview(cfg, run_dir, array_size=len(cfgs)), sweep_name=sweep_name,
                         code=code)
            (run_dir / "submitit").symlink_to(folder, target_is_directory=True)
            jobs_in.append(TrainJob(str(run_dir)))
            run_dirs.append(run_dir)
        jobs = backend.submit_array(cfgs, run_dirs, jobs_in, folder)
        out = []
        for cfg, job in zip(cfgs, jobs, strict=True):
            run_dir = paths.run_dir(cfg.name)
            store.append_job_id(cfg.name, str(job.job_id))
            store.update_run(cfg.name, log_dir=str(folder))
            out.append(
                SubmittedRun(
                    cfg.name,
                    run_dir,
                    str(job.job_id),
                    c,
                    (run_dir / "capsule" / "sbatch.sh").read_text(),
                    launch_command(cfg, run_dir),
                    job,
                )
            )
        return out
    finally:
        if own_store:
            store.close()
