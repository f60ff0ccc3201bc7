"""``awm bench`` sub-app (benchmarks/cli.py): list, score folders, errors, atomic outputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmarks.cli import app, parse_options
from benchmarks.ocr.testing import render_text
from benchmarks.pickscore.testing import build_tiny_pickscore
from tests.benchmarks.conformance import pattern_image

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def ocr_folder(tmp_path):
    prompts = ['A sign that says "Hello World 2025"', 'A poster "Fresh Bread"', 'A neon sign "Cafe Luna"']
    (tmp_path / "prompts.txt").write_text("\n".join(prompts), encoding="utf-8")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    render_text("Hello World 2025").save(imgs / "00000_00.png")
    render_text("Hello Wrold 2052").save(imgs / "00000_01.png")
    render_text("Fresh Bread").save(imgs / "00001_00.png")
    render_text("Cafe Luna").save(imgs / "00002_00.png")
    return tmp_path


def test_list_json():
    res = run("list", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"ocr", "pickscore", "geneval"} <= set(rows)
    assert rows["ocr"]["version"] == "ocr-1.0" and rows["ocr"]["prompts"] == {"test": 1018, "train": 20000}
    assert rows["ocr"]["models_available"] is True and rows["ocr"]["engine"].startswith("rapidocr")
    assert rows["pickscore"]["prompts"] == {"test": 2048, "train": 25432}
    assert rows["pickscore"]["models_available"] is False  # no weights offline
    assert "model_path" in rows["pickscore"]["models_detail"]


def test_list_table():
    res = run("list")
    assert res.exit_code == 0, res.output
    for word in ("ocr", "pickscore", "ocr-1.0", "1018", "2048"):
        assert word in res.output


def test_score_ocr_folder(ocr_folder):
    out = ocr_folder / "out"
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt",
              "--out", out, "--workers", "1")
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in recs] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    for r in recs:
        assert {"score", "target", "recognized", "distance"} <= set(r)
    assert recs[1]["score"] == pytest.approx(1 - 4 / 14)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("benchmark", "version", "engine", "n", "score", "ci_low", "ci_high"):
        assert key in summary
    assert summary["benchmark"] == "ocr" and summary["version"] == "ocr-1.0" and summary["n"] == 4
    # mean over prompts of per-prompt means (prompt 0 has two images)
    pm = [(recs[0]["score"] + recs[1]["score"]) / 2, recs[2]["score"], recs[3]["score"]]
    assert summary["score"] == pytest.approx(sum(pm) / 3)
    assert summary["ci_low"] <= summary["score"] <= summary["ci_high"]
    assert sorted(p.name for p in out.iterdir()) == ["samples.jsonl", "summary.json"]  # no temp files left
    assert json.loads(res.stdout.strip().splitlines()[-1])["score"] == summary["score"]


def test_score_bad_image_name(ocr_folder):
    (ocr_folder / "imgs" / "cat.png").write_bytes(b"x")
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt",
              "--out", ocr_folder / "out")
    assert res.exit_code == 2
    assert "cat.png" in res.output and "bad image file name" in res.output
    assert not (ocr_folder / "out").exists()


def test_score_missing_prompt_index(ocr_folder):
    render_text("x").save(ocr_folder / "imgs" / "00007_00.png")
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt",
              "--out", ocr_folder / "out")
    assert res.exit_code == 2
    assert "00007_00.png" in res.output and "prompt index 7" in res.output


def test_score_unreadable_image(ocr_folder):
    (ocr_folder / "imgs" / "00001_01.png").write_bytes(b"not a png")
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt",
              "--out", ocr_folder / "out")
    assert res.exit_code == 2 and "00001_01.png" in res.output


def test_score_error_names_the_file(ocr_folder):
    (ocr_folder / "prompts.txt").write_text('a "x"\nno quotes here\na "y"', encoding="utf-8")
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt",
              "--out", ocr_folder / "out")
    assert res.exit_code == 2
    assert "00001_00.png" in res.output and "double quotes" in res.output


def test_score_errors(ocr_folder, tmp_path):
    common = ["--out", tmp_path / "o"]
    res = run("score", "nope", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt", *common)
    assert res.exit_code == 2 and "unknown benchmark" in res.output
    res = run("score", "ocr", "--images", tmp_path / "missing", "--prompts", ocr_folder / "prompts.txt", *common)
    assert res.exit_code == 2 and "image folder not found" in res.output
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", tmp_path / "none.txt", *common)
    assert res.exit_code == 2 and "prompt file not found" in res.output
    res = run("score", "ocr", "--prompts", ocr_folder / "prompts.txt", *common)
    assert res.exit_code == 2 and "--images" in res.output
    res = run("score", "ocr", "--detections", tmp_path / "d.jsonl", *common)
    assert res.exit_code == 2 and "geneval" in res.output
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt",
              "--engine", "easyocr", *common)
    assert res.exit_code == 2 and "unknown engine" in res.output
    res = run("score", "ocr", "--images", ocr_folder / "imgs", "--prompts", ocr_folder / "prompts.txt",
              "--opt", "garbage", *common)
    assert res.exit_code == 2 and "KEY=VALUE" in res.output


def test_score_pickscore_with_tiny_model(tmp_path):
    model_dir, proc_dir = build_tiny_pickscore(tmp_path / "m")
    (tmp_path / "p.txt").write_text("a red apple\na cat in a hat\n", encoding="utf-8")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for pi in range(2):
        for si in range(2):
            pattern_image(pi * 2 + si).save(imgs / f"{pi:05d}_{si:02d}.png")
    res = run("score", "pickscore", "--images", imgs, "--prompts", tmp_path / "p.txt", "--out", tmp_path / "out",
              "--opt", f"model_path={model_dir}", "--opt", f"processor_path={proc_dir}", "--opt", "device=cpu")
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all("raw_score" in r and r["raw_score"] == r["score"] for r in recs)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["benchmark"] == "pickscore" and summary["engine"].startswith("transformers:")


def test_score_pickscore_offline_error(tmp_path):
    (tmp_path / "p.txt").write_text("a red apple\n", encoding="utf-8")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    pattern_image(0).save(imgs / "00000_00.png")
    res = run("score", "pickscore", "--images", imgs, "--prompts", tmp_path / "p.txt", "--out", tmp_path / "out",
              "--opt", f"model_path={tmp_path / 'no-weights'}")
    assert res.exit_code == 2
    assert "no-weights" in res.output and "model_path" in res.output


def test_parse_options():
    assert parse_options(["a=1", "b=true", "c=x/y", "d=1.5", "e="]) == {"a": 1, "b": True, "c": "x/y", "d": 1.5, "e": ""}
    with pytest.raises(ValueError):
        parse_options(["1x=2"])


def test_cli_import_is_light():
    import subprocess
    import sys

    code = ("import sys, benchmarks.cli; heavy = [m for m in ('torch', 'transformers', 'PIL', 'numpy', "
            "'rapidocr_onnxruntime') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_score_geneval_detections(tmp_path):
    meta = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "counting", "include": [{"class": "clock", "count": 2}],
         "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"},
    ]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta), encoding="utf-8")

    def det(cls, box, score=0.95):
        return {"class": cls, "box": box, "score": score}

    rows = [
        {"prompt_index": 0, "sample_index": 0, "width": 512, "height": 512, "detections": [det("bench", [0, 0, 10, 10])]},
        {"prompt_index": 0, "sample_index": 1, "width": 512, "height": 512, "detections": []},
        {"prompt_index": 1, "sample_index": 0, "width": 512, "height": 512,
         "detections": [det("clock", [0, 0, 10, 10]), det("clock", [50, 0, 60, 10])]},
    ]
    (tmp_path / "dets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    res = run("score", "geneval", "--detections", tmp_path / "dets.jsonl", "--prompts", tmp_path / "meta.jsonl",
              "--out", out)
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"], r["score"]) for r in recs] == [(0, 0, 1.0), (0, 1, 0.0), (1, 0, 1.0)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "geneval" and "per_tag" in summary and summary["n"] == 3
    res = run("score", "geneval", "--detections", tmp_path / "dets.jsonl", "--images", tmp_path, "--out", out)
    assert res.exit_code == 2 and "not both" in res.output
