"""The one dotted-key getter/setter (`--set` overrides, sweep boundary checks, trial configs)."""

from __future__ import annotations

import pytest

from awm_platform.dotted import NotASectionError, get_dotted, set_dotted


def test_set_dotted_returns_a_changed_copy_and_creates_sections() -> None:
    data = {"train": {"beta": 0.1, "lr": 1.0}, "name": "r"}
    out = set_dotted(data, "train.beta", 0.3)
    assert out == {"train": {"beta": 0.3, "lr": 1.0}, "name": "r"}
    assert data["train"]["beta"] == 0.1  # the input is left as it is, nested dicts included
    assert set_dotted(data, ["sample", "num_steps"], 7)["sample"] == {"num_steps": 7}
    assert get_dotted(out, "train.beta") == 0.3 and get_dotted(out, "name") == "r"


def test_dotted_errors_name_the_part() -> None:
    with pytest.raises(NotASectionError, match="'beta' is not a section"):
        set_dotted({"train": {"beta": 0.1}}, "train.beta.x", 1)
    with pytest.raises(KeyError, match="train.nope"):
        get_dotted({"train": {"beta": 0.1}}, "train.nope")
    with pytest.raises(KeyError):
        get_dotted({"train": 1}, "train.beta")
