"""Two CPU processes with gloo (stack-notes P5 recipe): DDP keeps the LoRA weights identical."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.trainer.conftest import small_config_dict


@pytest.mark.slow
def test_two_process_gloo_keeps_lora_identical(tiny_dir, tmp_path):
    from trainers.awm import checkpoint as C

    accel = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accel, "accelerate CLI not found"
    cfg = small_config_dict(tiny_dir, num_epochs=2, save_freq=1,
                            sample={"prompts_per_epoch": 2, "num_image_per_prompt": 4},
                            eval={"max_prompts": 3})
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [accel, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "awm_platform.runner.train_cli", str(cfg_path), "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    for step in (1, 2):
        st = run / "checkpoints" / f"step-{step}" / "state"
        d0 = C.load_torch(st / "rank-0.pt")["adapter_sha256"]
        d1 = C.load_torch(st / "rank-1.pt")["adapter_sha256"]
        assert d0 == d1
    info = C.find_latest_valid(run)
    assert info.step == 2 and info.manifest["world_size"] == 2
    # the evaluation dealt prompts to both ranks without duplicates
    lines = (run / "evals" / "step-2" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6
