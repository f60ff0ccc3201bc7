"""Launching, preemption/requeue, job state and MLflow tracking of training runs.

Public API (docs/contracts.md, Runner): `api.submit_run`, `api.submit_runs`, `api.rerun`,
`api.SubmittedRun`, `api.SubmitError`, `state.refresh_states`, `state.cancel_run`. This package
module imports nothing: the CLI imports `awm_platform.runner.cli` at start-up.
"""
