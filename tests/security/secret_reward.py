"""A custom reward (`tests.security.secret_reward:make_reward`) that carries secrets in its
reward_kwargs and proves, inside the job, that the job got them raw: the kwargs are not
redacted and the `launcher.setup` lines (sourced from the 0600 setup.sh) exported the raw values.
Scores like jpeg_compressibility."""

from __future__ import annotations

import os
from typing import Any

from benchmarks.jpeg import jpeg_compressibility


def make_reward(api_key: str, endpoint: str, env: dict[str, str]) -> Any:
    if "***" in api_key or "***" in endpoint:
        raise ValueError("the job got redacted reward_kwargs: it must get the raw values")
    wrong = sorted(k for k, v in env.items() if os.environ.get(k) != v)
    if wrong:
        raise ValueError(f"launcher.setup did not export the raw values of {wrong}")
    score = jpeg_compressibility()
    name = "tests.security.secret_reward:make_reward"

    def reward(images: list[Any], prompts: list[str], metadata: list[Any]) -> dict[str, Any]:
        return {name: score(images, prompts, metadata)["jpeg_compressibility"]}

    return reward
