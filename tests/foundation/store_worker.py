"""One of the concurrent writers of test_store_concurrency (run as a separate process).

All workers sleep until the same start instant, then race: open a fresh store (migration
race), create a shared run (creation race), append to it (lost-update race) and write
their own rows."""

from __future__ import annotations

import sys
import time

from awm_platform.store import Store, StoreError


def main(url: str, worker: int, start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    store = Store(url)
    try:
        store.create_run(name="shared", config_hash="h", resolved_config={}, output_dir="/shared")
    except StoreError as exc:
        if "already exists" not in str(exc):
            raise
    name = f"w{worker:02d}"
    store.create_run(name=name, config_hash="h", resolved_config={"worker": worker}, output_dir=f"/{name}")
    store.append_job_id("shared", str(worker))
    for step in range(10):
        store.log_metrics(name, {"eval/x": float(step), "train/y": float(worker)}, step)
        store.log_metrics("shared", {f"w/{worker}": float(step)}, step)
    for step in range(5):
        store.add_checkpoint(name, step=step, path=f"/{name}/{step}", sha256="0" * 64, formats=["diffusers"])
    store.update_run(name, status="COMPLETED")
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
