"""``score_detections_file``: the official rules on precomputed detections, no model."""

from __future__ import annotations

import json

import pytest

from benchmarks.errors import BenchmarkError
from benchmarks.geneval import VERSION
from benchmarks.geneval.benchmark import score_detections_file
from benchmarks.geneval.prompts import write_jsonl

META = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {
        "tag": "counting",
        "include": [{"class": "clock", "count": 2}],
        "exclude": [{"class": "clock", "count": 3}],
        "prompt": "a photo of two clocks",
    },
    {
        "tag": "colors",
        "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}],
        "prompt": "a photo of a blue fire hydrant",
    },
    {
        "tag": "position",
        "include": [
            {"class": "teddy bear", "count": 1},
            {"class": "dog", "count": 1, "position": ["right of", 0]},
        ],
        "prompt": "a photo of a dog right of a teddy bear",
    },
]


def d(cls, box, score=0.95, color=None):
    out = {"class": cls, "box": box, "score": score}
    if color:
        out["color"] = color
    return out


def line(pi, si, dets):
    return {"prompt_index": pi, "sample_index": si, "width": 512, "height": 512, "detections": dets}


@pytest.fixture()
def files(tmp_path):
    meta = tmp_path / "meta.jsonl"
    write_jsonl(META, meta)
    rows = [
        line(
            0, 0, [d("bench", [0, 0, 10, 10]), d("bench", [50, 0, 60, 10]), d("bench", [90, 0, 99, 9])]
        ),  # extras ok
        line(0, 1, [d("bench", [0, 0, 10, 10], 0.3)]),  # not > 0.3
        line(
            1,
            0,
            [
                d("clock", [0, 0, 10, 10], 0.93),
                d("clock", [50, 0, 60, 10], 0.97),
                d("clock", [90, 0, 99, 9], 0.85),
            ],
        ),
        line(1, 1, [d("clock", [0, 0, 10, 10]), d("clock", [50, 0, 60, 10]), d("clock", [90, 0, 99, 9])]),
        line(2, 0, [d("fire hydrant", [0, 0, 10, 10], color="blue")]),
        line(2, 1, [d("fire hydrant", [0, 0, 10, 10])]),  # no colour given -> the colour clause fails
        line(3, 0, [d("teddy bear", [0, 0, 10, 10]), d("dog", [40, 0, 50, 10])]),
        line(3, 1, [d("teddy bear", [40, 0, 50, 10]), d("dog", [0, 0, 10, 10])]),
    ]
    det = tmp_path / "dets.jsonl"
    write_jsonl(rows, det)
    return det, meta


def test_scores_and_summary(files):
    det, meta = files
    records, summary = score_detections_file(det, meta, n_boot=200)
    got = {(r.prompt_index, r.sample_index): r for r in records}
    assert [got[k].score for k in sorted(got)] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert got[(1, 1)].extra["failing_clause"] == "counting: found 3 clock, expected exactly 2"
    assert (
        got[(2, 1)].extra["failing_clause"].startswith("colors: expected 1 blue fire hydrant, found 0 blue")
    )
    assert (
        got[(3, 1)].extra["failing_clause"]
        == "position: expected dog right of teddy bear, found dog left of teddy bear"
    )
    assert got[(1, 0)].extra["detections"] == {
        "clock": [
            {"class": "clock", "box": [50.0, 0.0, 60.0, 10.0], "score": 0.97},
            {"class": "clock", "box": [0.0, 0.0, 10.0, 10.0], "score": 0.93},
        ]
    }
    assert got[(0, 0)].extra["tag"] == "single_object" and got[(0, 0)].extra["line"] == 1
    assert got[(0, 0)].extra["partial_score"] == pytest.approx(-1.0)  # 3 benches, Flow-GRPO partial (audit)
    assert summary.score == pytest.approx(0.5) and summary.extra["per_tag"] == {
        "single_object": 0.5,
        "counting": 0.5,
        "colors": 0.5,
        "position": 0.5,
    }
    assert summary.version == VERSION and summary.engine == "detections-file" and summary.n == 8
    json.dumps(summary.to_dict())


def test_scoring_options_change_results_and_version(files):
    det, meta = files
    records, summary = score_detections_file(det, meta, threshold=0.2, n_boot=50)
    assert {(r.prompt_index, r.sample_index): r.score for r in records}[(0, 1)] == 1.0
    assert summary.version.startswith(VERSION + "+opts-")
    with pytest.raises(BenchmarkError, match="unknown option"):
        score_detections_file(det, meta, thresh=0.2)


def test_default_metadata_is_the_shipped_test_set(tmp_path):
    from benchmarks.geneval.prompts import load_prompt_set

    first = load_prompt_set("test")[0]  # two wine glasses (counting)
    det = tmp_path / "d.jsonl"
    write_jsonl(
        [
            line(
                0,
                0,
                [
                    d(first["include"][0]["class"], [0, 0, 5, 5]),
                    d(first["include"][0]["class"], [20, 0, 25, 5]),
                ],
            )
        ],
        det,
    )
    records, summary = score_detections_file(det)
    assert records[0].score == 1.0 and records[0].extra["tag"] == "counting"
    assert summary.extra["metadata"].endswith("test_metadata.jsonl")


@pytest.mark.parametrize(
    "bad,msg",
    [
        ("{not json", "invalid JSON"),
        (
            json.dumps({"prompt_index": 0, "sample_index": 0, "width": 5, "height": 5}),
            "missing field 'detections'",
        ),
        (json.dumps(line(9, 0, [])), "prompt_index 9 is out of range"),
        (json.dumps(line(0, 0, [d("unicorn", [0, 0, 1, 1])])), "class 'unicorn'"),
        (json.dumps(line(0, 0, [d("dog", [0, 0, 1])])), "box must be"),
        (json.dumps(line(0, 0, [d("dog", [5, 0, 1, 1])])), "x2 < x1"),
        (json.dumps(line(0, 0, [d("dog", [0, 0, 1, 1], color="teal")])), "color 'teal'"),
        (json.dumps(line(0, 0, [{"class": "dog", "box": [0, 0, 1, 1], "score": "high"}])), "score must be"),
        (json.dumps(line(0, -1, [])), "sample_index must be"),
        (json.dumps(line(0, 0, [])), "duplicate prompt_index 0 sample_index 0"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, bad, msg):
    meta = tmp_path / "meta.jsonl"
    write_jsonl(META, meta)
    det = tmp_path / "dets.jsonl"
    det.write_text(json.dumps(line(0, 0, [])) + "\n\n" + bad + "\n")
    with pytest.raises(BenchmarkError) as e:
        score_detections_file(det, meta)
    assert f"{det}: line 3: " in str(e.value) and msg in str(e.value)


def test_bad_metadata_and_missing_files(tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps(META[0]) + "\n" + json.dumps({"tag": "weird", "include": []}) + "\n")
    det = tmp_path / "dets.jsonl"
    write_jsonl([line(0, 0, [])], det)
    with pytest.raises(BenchmarkError, match=r"meta.jsonl:2: unknown tag 'weird'"):
        score_detections_file(det, meta)
    with pytest.raises(BenchmarkError, match="detections file not found"):
        score_detections_file(tmp_path / "nope.jsonl", None)
    with pytest.raises(BenchmarkError, match="metadata file not found"):
        score_detections_file(det, tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(BenchmarkError, match="no detection records"):
        score_detections_file(empty)
