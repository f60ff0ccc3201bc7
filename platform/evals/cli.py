"""`awm eval ...`: checkpoint evaluations (docs/evals.md).

`run` evaluates a TARGET now, `schedule` finds every checkpoint that lacks an evaluation and
submits the missing work (once, every S seconds, or from cron), `list` / `show` read the store,
`compare` runs the paired test of two evaluations, `retry` / `cancel` act on one.

Import-light on purpose (`awm --help` stays instant): the store, the scheduler (torch, mlflow,
submitit) and rich are imported inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from awm_platform.cli.common import OverridesOpt, fail
from awm_platform.runner.cli import ClusterOpt

app = typer.Typer(help="Checkpoint evaluations (GenEval, OCR, PickScore): run, schedule, list, show, compare.",
                  no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="An experiment YAML: its eval.service (the spec of every target), launcher, storage and "
                     "tracking sections are used. Default: each run's own eval.service (from its training config) "
                     "with --set eval.service.* on top, the built-in defaults for the rest, $AWM_HOME's store.")]
BenchmarksOpt = Annotated[str | None, typer.Option(
    "--benchmarks", "-b", help="Comma-separated benchmarks, e.g. geneval,ocr,pickscore.")]
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", help="policy | ema | both (default: eval.service.weights). both = two evaluations.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until every evaluation is COMPLETED, FAILED or "
                                                      "CANCELLED (dead work is resubmitted meanwhile).")]
# exceptions that are the user's input: one `error:` line, exit 2
_USER_ERRORS = ("ConfigError", "ScheduleError", "TargetError", "StoreError", "SubmitError", "BenchmarkError",
                "ComparisonError", "ValueError")


def _is_user_error(exc: BaseException) -> bool:
    return any(cls.__name__ in _USER_ERRORS for cls in type(exc).__mro__)


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


def _load_config(config: Path | None, overrides: list[str]) -> Any:
    from awm_platform.config import apply_overrides, config_from_dict, load_config

    if config is not None:
        return load_config(config, overrides)
    return config_from_dict(apply_overrides({}, overrides), source="--set")


def _record(ev: Any) -> dict[str, Any]:
    """One evaluation as `list --json` shows it."""
    return {"id": ev.id, "target": ev.target, "run": ev.run_name, "step": ev.step, "benchmark": ev.benchmark,
            "version": ev.benchmark_version, "spec_hash": ev.spec_hash, "weights": (ev.spec or {}).get("weights"),
            "partial": bool(ev.partial), "status": ev.status, "score": ev.score, "ci_low": ev.ci_low,
            "ci_high": ev.ci_high, "n": ev.num_samples}


def _print_table(records: list[dict[str, Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "target", "benchmark", "version", "spec", "weights", "status", "score", "95% CI", "n",
                  title=title, title_justify="left")
    for r in records:
        score = "" if r["score"] is None else f"{r['score']:.4f}"
        ci = "" if r["ci_low"] is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        status = r["status"] + (" (partial)" if r["partial"] else "")
        table.add_row(str(r["id"]), r["target"], r["benchmark"], r["version"], r["spec_hash"][:8],
                      str(r["weights"] or ""), status, score, ci, str(r["n"]))
    Console(width=200).print(table)


def _pre_checks(shards: int | None, limit: int | None, max_jobs: int | None = None) -> list[str]:
    """Flag values checked before anything is opened; returns the `--set` overrides they make."""
    if shards is not None and shards < 1:
        fail(f"--shards must be >= 1 (prompt shards = array tasks per evaluation), got {shards}")
    if limit is not None and limit < 1:
        fail(f"--limit must be >= 1 (the first N prompts), got {limit}")
    if max_jobs is not None and max_jobs < 1:
        fail(f"--max-jobs must be >= 1, got {max_jobs}")
    return ([f"eval.service.shards={shards}"] if shards is not None else []) + \
           ([f"eval.service.limit={limit}"] if limit is not None else [])


def _final_code(evals: list[Any]) -> int:
    return 0 if all(ev.status == "COMPLETED" for ev in evals) else 1


@app.command("run")
def eval_run(
    target: Annotated[str, typer.Argument(help="RUN (newest checkpoint), RUN@STEP, RUN@all, a checkpoint "
                                               "directory, sweep:NAME (each trial's best checkpoint) or base:MODEL.")],
    benchmarks: BenchmarksOpt = None,
    cluster: ClusterOpt = None,
    shards: Annotated[int | None, typer.Option("--shards", help="Prompt shards = array tasks "
                                                                "(default: eval.service.shards).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N prompts: a PARTIAL evaluation, "
                                                              "never compared with full ones.")] = None,
    weights: WeightsOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: OverridesOpt = None,
) -> None:
    """Evaluate TARGET on the benchmarks (COMPLETED evaluations are not redone).

    Ensures its evaluations and submits the missing work: one job array per base model."""
    extra = _pre_checks(shards, limit)  # before the heavy imports: a typo is answered at once
    from awm_platform.evals.scheduler import Scheduler, check_weights, parse_benchmarks, parse_weights
    from awm_platform.store import Store

    try:
        names = parse_benchmarks(benchmarks or "")
        cfg = _load_config(config, [*(set_ or []), *extra])
        service = cfg.eval.service
        weights_list = parse_weights(weights, service)
        check_weights(service, names)  # before anything is written or submitted
        store = Store.for_config(cfg)
    except Exception as exc:
        if _is_user_error(exc):
            fail(str(exc))
        raise
    try:
        scheduler = Scheduler(store, cfg, cluster=cluster, echo=_echo_err,
                              run_spec_overrides=None if config is not None else [*(set_ or []), *extra])
        try:
            targets = scheduler.resolve(target)
            summary = scheduler.schedule(benchmarks=names, weights=weights_list, targets=targets)
        except Exception as exc:
            if _is_user_error(exc):
                fail(str(exc))
            raise
        evals = (scheduler.wait(summary.evaluation_ids) if wait
                 else [store.get_evaluation(i) for i in summary.evaluation_ids])
        records = [_record(ev) for ev in evals]
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"summary": summary.to_dict(), "evaluations": records}, indent=2))
    else:
        _print_table(records, title=f"{target}: {summary.submitted} submitted, {summary.already_done} already done, "
                                    f"{summary.running} running, {summary.failed} failed")
    if wait:
        raise typer.Exit(_final_code(evals))


@app.command("schedule")
def eval_schedule(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit 0 (cron). The default.")] = False,
    interval: Annotated[float | None, typer.Option(
        "--interval", help="A pass every SECONDS until SIGTERM/SIGINT (the pass in progress finishes).")] = None,
    benchmarks: BenchmarksOpt = None,
    runs: Annotated[str | None, typer.Option("--runs", help="Only runs whose name matches this glob.")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Only the trial runs of this sweep.")] = None,
    max_jobs: Annotated[int | None, typer.Option("--max-jobs", help="Submit at most N jobs per pass.")] = None,
    cluster: ClusterOpt = None,
    weights: WeightsOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: OverridesOpt = None,
) -> None:
    """Submit the evaluations every checkpoint lacks (cron: --once; daemon: --interval).

    Checkpoints: the store's, and those in run directories with a valid manifest. The missing work
    goes out as batched jobs. --benchmarks defaults to the config's eval.on_checkpoint."""
    if once and interval is not None:
        fail("--once and --interval exclude each other: one pass, or a pass every SECONDS")
    if interval is not None and interval <= 0:
        fail(f"--interval must be > 0 seconds, got {interval}")
    if wait and interval is not None:
        fail("--wait goes with --once (a scheduler running forever has nothing to wait for)")
    _pre_checks(None, None, max_jobs)
    from awm_platform.evals.scheduler import (
        Scheduler,
        check_weights,
        parse_benchmarks,
        parse_weights,
        schedule_forever,
    )
    from awm_platform.store import Store

    try:
        cfg = _load_config(config, list(set_ or []))
        names = parse_benchmarks(benchmarks or cfg.eval.on_checkpoint)
        weights_list = parse_weights(weights, cfg.eval.service)
        check_weights(cfg.eval.service, names)
        store = Store.for_config(cfg)
    except Exception as exc:
        if _is_user_error(exc):
            fail(str(exc))
        raise
    try:
        if sweep is not None:
            try:
                store.get_sweep(sweep)
            except Exception as exc:
                if _is_user_error(exc):
                    fail(str(exc))
                raise
        scheduler = Scheduler(store, cfg, cluster=cluster, echo=_echo_err,
                              run_spec_overrides=None if config is not None else list(set_ or []))
        if interval is not None:
            def on_pass(summary: Any) -> None:
                line = json.dumps(summary.to_dict()) if as_json else _summary_line(summary.to_dict())
                typer.echo(line)
                sys.stdout.flush()

            schedule_forever(scheduler, interval, benchmarks=names, weights=weights_list, runs_glob=runs, sweep=sweep,
                             max_jobs=max_jobs, on_pass=on_pass)
            return
        try:
            summary = scheduler.schedule(benchmarks=names, weights=weights_list, runs_glob=runs, sweep=sweep,
                                         max_jobs=max_jobs)
        except Exception as exc:
            if _is_user_error(exc):
                fail(str(exc))
            raise
        out = summary.to_dict()
        if wait:
            evals = scheduler.wait(summary.evaluation_ids)
            out["final"] = {s: sum(ev.status == s for ev in evals) for s in sorted({ev.status for ev in evals})}
    finally:
        store.close()
    typer.echo(json.dumps(out, indent=2) if as_json else _summary_line(out))


def _summary_line(s: dict[str, Any]) -> str:
    line = (f"found {s['found']}, submitted {s['submitted']} (jobs: {', '.join(s['jobs']) or 'none'}), "
            f"already done {s['already_done']}, running {s['running']}, failed {s['failed']}, skipped {s['skipped']}")
    if s.get("deferred"):
        line += f", deferred {s['deferred']} (--max-jobs)"
    if "final" in s:
        line += "; after waiting: " + ", ".join(f"{k} {v}" for k, v in s["final"].items())
    return line


@app.command("list")
def eval_list(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's checkpoints.")] = None,
    benchmark: Annotated[str | None, typer.Option("--benchmark", help="Only this benchmark.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status (PENDING, RUNNING, COMPLETED, "
                                                                "FAILED, CANCELLED).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON records instead of a table.")] = False,
    db: Annotated[str | None, typer.Option("--db", help="Platform DB URL (default: $AWM_HOME/awm.db).")] = None,
) -> None:
    """List evaluations with their score and 95% CI (partial ones marked).

    Columns: id, target, benchmark, version, spec hash, weights, status, score, CI, samples."""
    statuses = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")  # store.EvalStatus, without the import
    if status is not None and status.upper() not in statuses:
        fail(f"--status {status!r}: expected one of {', '.join(statuses)}")
    from awm_platform.store import NotFoundError, Store

    store = Store.default(db)
    try:
        evals = store.list_evaluations(run_name=run, benchmark=benchmark, status=status.upper() if status else None)
    except NotFoundError as exc:
        fail(str(exc))
    finally:
        store.close()
    records = [_record(ev) for ev in evals]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    _print_table(records)


def _get(store: Any, eval_id: int) -> Any:
    from awm_platform.store import NotFoundError

    try:
        return store.get_evaluation(eval_id)
    except NotFoundError as exc:
        fail(f"{exc} in {store.redacted_url}")


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


@app.command("show")
def eval_show(
    eval_id: Annotated[int, typer.Argument(help="Evaluation id (`awm eval list`).")],
    as_json: JsonOpt = False,
    db: Annotated[str | None, typer.Option("--db", help="Platform DB URL (default: $AWM_HOME/awm.db).")] = None,
) -> None:
    """One evaluation: score and CI, per-tag scores, spec, images dir, shards, job ids, error."""
    from awm_platform.store import Store, as_utc

    store = Store.default(db)
    try:
        ev = _get(store, eval_id)
        shards = store.list_shards(ev.id)
    finally:
        store.close()
    data = {**_record(ev), "checkpoint_sha256": ev.checkpoint_sha256, "checkpoint_path": ev.checkpoint_path,
            "key": ev.key, "spec": ev.spec, "sub_scores": ev.sub_scores, "images_dir": ev.images_dir,
            "cluster": ev.cluster, "job_dir": ev.job_dir, "job_ids": list(ev.job_ids), "wall_s": ev.wall_s,
            "gpu_hours": ev.gpu_hours, "mlflow_run_id": ev.mlflow_run_id, "mirrored": bool(ev.mirrored),
            "error": ev.error, "created_at": _iso(as_utc(ev.created_at)), "started_at": _iso(as_utc(ev.started_at)),
            "ended_at": _iso(as_utc(ev.ended_at)),
            "shards": [{"index": s.shard_index, "status": s.status, "attempts": s.attempts,
                        "lease_holder": s.lease_holder, "lease_expires_at": _iso(as_utc(s.lease_expires_at)),
                        "num_images": s.num_images, "gen_s": s.gen_s, "score_s": s.score_s, "error": s.error}
                       for s in shards]}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    score = "" if ev.score is None else f" {ev.score:.4f} [{ev.ci_low:.4f}, {ev.ci_high:.4f}] (95% CI, n={ev.num_samples})"
    lines = [(f"evaluation {ev.id}: {ev.target} {ev.benchmark} {ev.benchmark_version} -> {ev.status}"
              f"{' (PARTIAL)' if ev.partial else ''}{score}"),
             f"  key {ev.key}  spec {ev.spec_hash}  checkpoint {ev.checkpoint_sha256[:16]}"]
    per_tag = (ev.sub_scores or {}).get("per_tag") or {}
    for tag, value in sorted(per_tag.items()):
        lines.append(f"  {tag}: {value:.4f}" if isinstance(value, (int, float)) else f"  {tag}: {value}")
    if (ev.sub_scores or {}).get("ci_method"):
        lines.append(f"  CI: {ev.sub_scores['ci_method']}")
    lines.append("  spec: " + ", ".join(f"{k}={v}" for k, v in sorted((ev.spec or {}).items())))
    lines.append(f"  images: {ev.images_dir}")
    lines.append(f"  jobs: {', '.join(map(str, ev.job_ids)) or 'none'} on {ev.cluster or '-'} ({ev.job_dir or '-'})")
    for s in data["shards"]:
        lines.append(f"  shard {s['index']}: {s['status']}, {s['attempts']} attempts, {s['num_images']} images"
                     + (f", error: {s['error']}" if s["error"] else ""))
    if ev.wall_s is not None:
        lines.append(f"  wall {ev.wall_s:.1f} s, {ev.gpu_hours:.4f} GPU-hours")
    if ev.error:
        lines.append(f"  error: {ev.error}")
    typer.echo("\n".join(lines))


def _pick(store: Any, side: str, benchmark: str | None, other: list[Any] | None = None) -> list[Any]:
    """The COMPLETED evaluations `side` (an id or a TARGET) may mean."""
    from awm_platform.evals.targets import resolve_targets

    if side.isdigit():
        return [_get(store, int(side))]
    if benchmark is None:
        fail(f"{side}: comparing targets needs --benchmark NAME")
    targets = resolve_targets(store, side)
    if len(targets) != 1:
        fail(f"{side} names {len(targets)} checkpoints; compare one checkpoint with another (RUN@STEP)")
    out = [ev for ev in store.list_evaluations(benchmark=benchmark, status="COMPLETED")
           if ev.checkpoint_sha256 == targets[0].checkpoint_sha256]
    if not out:
        fail(f"{side}: no COMPLETED {benchmark} evaluation of {targets[0].label} (run `awm eval run {side} "
             f"--benchmarks {benchmark} --wait`)")
    return out


@app.command("compare")
def eval_compare(
    a: Annotated[str, typer.Argument(help="Evaluation id or TARGET (RUN@STEP, base:MODEL, ...).")],
    b: Annotated[str, typer.Argument(help="Evaluation id or TARGET.")],
    benchmark: Annotated[str | None, typer.Option("--benchmark", help="The benchmark (needed for targets).")] = None,
    as_json: JsonOpt = False,
    db: Annotated[str | None, typer.Option("--db", help="Platform DB URL (default: $AWM_HOME/awm.db).")] = None,
) -> None:
    """Paired test of B - A: bootstrap 95% CI of the difference and a permutation p-value.

    On the (prompt, sample) pairs both share; "statistically tied" (the leaderboard's) = the CI holds 0."""
    from awm_platform.evals.stats import compare_evaluations
    from awm_platform.store import Store

    store = Store.default(db)
    try:
        try:
            ca, cb = _pick(store, a, benchmark), _pick(store, b, benchmark)
            if benchmark is not None:
                for side, evs in ((a, ca), (b, cb)):
                    if all(ev.benchmark != benchmark for ev in evs):
                        fail(f"{side}: evaluation {evs[0].id} is of {evs[0].benchmark}, not {benchmark}")
            # comparable pairs (same benchmark, version, spec but the weights, both partial or full):
            # the live LoRA (or base) before the EMA, then the newest; none: the refusal says why
            pairs = sorted(((x, y) for x in ca for y in cb if x.compare_hash == y.compare_hash),
                           key=lambda p: (sum((e.spec or {}).get("weights") == "ema" for e in p), -p[0].id - p[1].id))
            ev_a, ev_b = pairs[0] if pairs else (ca[-1], cb[-1])
            result = compare_evaluations(store, ev_a.id, ev_b.id)
        except Exception as exc:
            if _is_user_error(exc):
                fail(str(exc))
            raise
    finally:
        store.close()
    data = {"a": _record(ev_a), "b": _record(ev_b), **result.to_dict()}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    verdict = "statistically tied" if result.tied else ("B better" if result.diff > 0 else "A better")
    typer.echo(f"A = evaluation {ev_a.id} ({ev_a.target}): {result.mean_a:.4f}\n"
               f"B = evaluation {ev_b.id} ({ev_b.target}): {result.mean_b:.4f}\n"
               f"B - A = {result.diff:+.4f}  95% CI [{result.ci_low:+.4f}, {result.ci_high:+.4f}]  "
               f"p = {result.p_value:.4g}  ({result.n_pairs} pairs, {result.n_prompts} prompts): {verdict}\n"
               f"method: {result.method}")


@app.command("retry")
def eval_retry(
    eval_id: Annotated[int, typer.Argument(help="A FAILED or CANCELLED evaluation.")],
    cluster: ClusterOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: OverridesOpt = None,
) -> None:
    """Retry a FAILED or CANCELLED evaluation: PENDING again, submitted again.

    Its DONE shards are kept; it runs on the cluster it ran on unless --cluster says otherwise. Give
    the --config it was scheduled with: its weights_dirs are part of the benchmark version."""
    from awm_platform.evals.scheduler import Scheduler, check_weights
    from awm_platform.store import Store

    try:
        cfg = _load_config(config, list(set_ or []))
        store = Store.for_config(cfg)
    except Exception as exc:
        if _is_user_error(exc):
            fail(str(exc))
        raise
    try:
        ev = _get(store, eval_id)
        try:
            check_weights(cfg.eval.service, [ev.benchmark])
        except Exception as exc:
            if _is_user_error(exc):
                fail(str(exc))
            raise
        if not store.retry_evaluation(ev.id):
            fail(f"evaluation {ev.id} is {store.get_evaluation(ev.id).status}: only FAILED or CANCELLED "
                 "evaluations are retried")
        scheduler = Scheduler(store, cfg, cluster=cluster or ev.cluster, echo=_echo_err)
        try:
            scheduler.submit([ev])
        except Exception as exc:
            if _is_user_error(exc):
                fail(str(exc))
            raise
        evals = scheduler.wait([ev.id]) if wait else [store.get_evaluation(ev.id)]
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(_record(evals[0]), indent=2))
    else:
        typer.echo(f"evaluation {ev.id} ({ev.target} {ev.benchmark}): {evals[0].status}")
    if wait:
        raise typer.Exit(_final_code(evals))


@app.command("cancel")
def eval_cancel(
    eval_id: Annotated[int, typer.Argument(help="A PENDING or RUNNING evaluation.")],
    db: Annotated[str | None, typer.Option("--db", help="Platform DB URL (default: $AWM_HOME/awm.db).")] = None,
) -> None:
    """Cancel a PENDING or RUNNING evaluation (`retry` resumes it).

    Its workers drop it at their next lease renewal (nothing more is committed); a job serving
    other evaluations goes on with those."""
    from awm_platform.store import Store

    store = Store.default(db)
    try:
        ev = _get(store, eval_id)
        if not store.cancel_evaluation(ev.id):
            fail(f"evaluation {ev.id} is {store.get_evaluation(ev.id).status}: only PENDING or RUNNING evaluations "
                 "are cancelled")
    finally:
        store.close()
    typer.echo(f"evaluation {ev.id} ({ev.target} {ev.benchmark}) cancelled")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")
