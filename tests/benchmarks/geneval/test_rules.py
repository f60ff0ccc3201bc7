"""The GenEval rule engine on synthetic detections: one test group per trap of
docs/benchmarks.md section 7 (1-7), plus the Flow-GRPO partial-score worked values of section 2.3."""

from __future__ import annotations

import math

import pytest

from benchmarks.base import SampleRecord
from benchmarks.geneval.benchmark import aggregate_records
from benchmarks.geneval.rules import (
    Detection,
    RewardQuirks,
    ScoringOptions,
    compute_iou,
    evaluate_official,
    evaluate_partial,
    filter_detections,
    overall_score,
    per_tag_accuracy,
    relative_position,
)


def det(cls, box=(0, 0, 10, 10), score=0.95, color=None):
    return Detection(cls, tuple(float(v) for v in box), score, None, color)


class Colors:
    """Colour callback using Detection.color; remembers which objects were asked about."""

    def __init__(self):
        self.asked: list[Detection] = []

    def __call__(self, objs, cls):
        self.asked.extend(objs)
        return [o.color for o in objs]


def official(dets, meta, opts=None):
    colors = Colors()
    kept = filter_detections(dets, meta["tag"], opts)
    return evaluate_official(kept, meta, colors, opts), colors


def partial(dets, meta, quirks=None, opts=None):
    kept = filter_detections(dets, meta["tag"], opts)
    return evaluate_partial(kept, meta, Colors(), opts, quirks)


SINGLE_BENCH = {
    "tag": "single_object",
    "include": [{"class": "bench", "count": 1}],
    "prompt": "a photo of a bench",
}
TWO_CLOCKS = {
    "tag": "counting",
    "include": [{"class": "clock", "count": 2}],
    "exclude": [{"class": "clock", "count": 3}],
    "prompt": "a photo of two clocks",
}
BLUE_HYDRANT = {"tag": "colors", "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}]}
DOG_RIGHT_OF_TEDDY = {
    "tag": "position",
    "include": [
        {"class": "teddy bear", "count": 1},
        {"class": "dog", "count": 1, "position": ["right of", 0]},
    ],
    "prompt": "a photo of a dog right of a teddy bear",
}
TEDDY = (0, 0, 10, 10)
RIGHT = (40, 0, 50, 10)
LEFT = (-40, 0, -30, 10)


def boxes_at(n, y=0):
    return [(20 * i, y, 20 * i + 10, y + 10) for i in range(n)]


# ---------------------------------------------------------------- trap 1: thresholds
def test_trap1_threshold_is_strict_greater_than():
    kept = filter_detections([det("dog", score=0.3), det("dog", score=0.30001)], "single_object")
    assert [d.score for d in kept["dog"]] == [0.30001]
    assert filter_detections([det("dog", score=0.3)], "single_object") == {}  # empty classes are absent


def test_trap1_counting_threshold_applies_to_every_class_of_a_counting_image():
    dets = [det("clock", score=0.95), det("clock", score=0.9), det("dog", score=0.89), det("cat", score=0.91)]
    kept = filter_detections(dets, "counting")
    assert [d.score for d in kept["clock"]] == [0.95]  # 0.9 itself is not > 0.9
    assert "dog" not in kept and [d.score for d in kept["cat"]] == [0.91]
    kept_other = filter_detections(dets, "two_object")
    assert len(kept_other["clock"]) == 2 and "dog" in kept_other
    # so two clocks at 0.95 and 0.85: correct as a two_object-style clause, wrong for counting
    two = [det("clock", b, s) for b, s in zip(boxes_at(2), (0.95, 0.85))]
    assert not official(two, TWO_CLOCKS)[0].correct
    assert official(two, {**TWO_CLOCKS, "tag": "two_object", "exclude": []})[0].correct


# ---------------------------------------------------------------- trap 2: top-16, no NMS
def test_trap2_at_most_16_per_class_sorted_by_confidence():
    scores = [0.31 + 0.03 * i for i in range(20)]
    kept = filter_detections([det("cup", (i, 0, i + 5, 5), s) for i, s in enumerate(scores)], "single_object")
    got = [d.score for d in kept["cup"]]
    assert got == sorted(scores, reverse=True)[:16]
    custom = filter_detections(
        [det("cup", score=s) for s in scores], "single_object", ScoringOptions(max_objects=3)
    )
    assert len(custom["cup"]) == 3


def test_trap2_ties_follow_upstream_argsort_reversal():
    # upstream: np.argsort(scores)[::-1] -> among equal scores the LATER detection comes first
    a, b = det("cup", (0, 0, 5, 5), 0.5), det("cup", (50, 0, 55, 5), 0.5)
    assert filter_detections([a, b], "single_object")["cup"] == [b, a]


def test_trap2_no_nms_by_default_but_available():
    dup = [det("cup", (0, 0, 9, 9), 0.9), det("cup", (0, 0, 9, 9), 0.8), det("cup", (100, 0, 109, 9), 0.7)]
    assert len(filter_detections(dup, "single_object")["cup"]) == 2 + 1
    nms = filter_detections(dup, "single_object", ScoringOptions(max_overlap=0.5))
    assert [d.score for d in nms["cup"]] == [0.9, 0.7]
    # IoU uses the +1 pixel convention
    assert compute_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    assert compute_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 1.0


# ---------------------------------------------------------------- trap 3: top-count, >= count, exclude
def test_trap3_extra_instances_allowed_outside_counting():
    three_benches = [det("bench", b) for b in boxes_at(3)]
    v, _ = official(three_benches, SINGLE_BENCH)
    assert v.correct and v.failing_clause is None
    v0, _ = official([], SINGLE_BENCH)
    assert not v0.correct and v0.failing_clause == "single_object: found 0 bench, expected at least 1"


def test_trap3_counting_is_exact_through_the_exclude_clause():
    for n, ok in ((1, False), (2, True), (3, False), (5, False)):
        v, _ = official([det("clock", b) for b in boxes_at(n)], TWO_CLOCKS)
        assert v.correct is ok, n
    v, _ = official([det("clock", b) for b in boxes_at(3)], TWO_CLOCKS)
    assert v.failing_clause == "counting: found 3 clock, expected exactly 2"
    v, _ = official([det("clock", b) for b in boxes_at(1)], TWO_CLOCKS)
    assert v.failing_clause == "counting: found 1 clock, expected exactly 2"
    # a third clock below the 0.9 counting threshold does not count
    v, _ = official([det("clock", b, s) for b, s in zip(boxes_at(3), (0.99, 0.95, 0.85))], TWO_CLOCKS)
    assert v.correct


def test_trap3_exclude_counts_all_kept_detections_up_to_max_objects():
    # 17 confident clocks: the include uses the top-2, the exclude sees all 16 kept (>= 3) -> fail
    v, _ = official([det("clock", b) for b in boxes_at(17)], TWO_CLOCKS)
    assert not v.correct and "found 16 clock" in v.failing_clause
    # with max_objects=2 the exclude can never fire: a truncated list would make counting lenient
    v2, _ = official([det("clock", b) for b in boxes_at(17)], TWO_CLOCKS, ScoringOptions(max_objects=2))
    assert v2.correct


# ---------------------------------------------------------------- trap 4: colour on the top-count objects
def test_trap4_colour_checks_only_top_count_objects():
    red_dog = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}]}
    v, colors = official([det("dog", RIGHT, 0.9, "red"), det("dog", LEFT, 0.8, "blue")], red_dog)
    assert v.correct and [d.score for d in colors.asked] == [0.9]  # the 0.8 dog is never classified
    v, _ = official([det("dog", RIGHT, 0.9, "blue"), det("dog", LEFT, 0.8, "red")], red_dog)
    assert not v.correct
    assert v.failing_clause.startswith("colors: expected 1 red dog, found 0 red")
    two_red = {"tag": "colors", "include": [{"class": "dog", "count": 2, "color": "red"}]}
    v, _ = official(
        [det("dog", b, s, c) for b, s, c in zip(boxes_at(3), (0.9, 0.8, 0.7), ("red", "blue", "red"))],
        two_red,
    )
    assert not v.correct  # top-2 = red + blue
    assert v.colors == {0: ["red", "blue"]}


def test_trap4_missing_colour_fails_colour_clause():
    v, _ = official([det("fire hydrant", color=None)], BLUE_HYDRANT)
    assert not v.correct


# ---------------------------------------------------------------- trap 5: position
def test_trap5_relative_position_margin_and_original_norm():
    # centres 10 px apart horizontally, summed widths 60 -> margin 6 -> revised 4 -> 4/10 = 0.4 <= 0.5
    assert relative_position((10, 0, 40, 10), (0, 0, 30, 10)) == set()
    # (normalising by the revised norm, or dropping the margin, would say "right of")
    assert relative_position((10, 0, 40, 10), (0, 0, 30, 10), position_threshold=0.0) == {"right of"}
    # summed widths 20 -> margin 2 -> 8/10 = 0.8
    assert relative_position((10, 0, 20, 10), (0, 0, 10, 10)) == {"right of"}
    assert relative_position((0, 0, 10, 10), (10, 0, 20, 10)) == {"left of"}


def test_trap5_image_y_points_down_and_relations_are_not_exclusive():
    assert relative_position((0, 0, 10, 10), (0, 50, 10, 60)) == {"above"}
    assert relative_position((0, 50, 10, 60), (0, 0, 10, 10)) == {"below"}
    # 45 degrees: both hold ((10-0.4)/sqrt(200) = 0.68 > 0.5 on each axis)
    assert relative_position((10, 10, 11, 11), (0, 0, 1, 1)) == {"right of", "below"}
    # identical / overlapping boxes: no relation at all
    assert relative_position((0, 0, 10, 10), (0, 0, 10, 10)) == set()
    assert relative_position((0, 0, 10, 10), (1, 1, 11, 11)) == set()


def test_trap5_position_clause_semantics():
    ok, _ = official([det("teddy bear", TEDDY), det("dog", RIGHT)], DOG_RIGHT_OF_TEDDY)
    assert ok.correct
    # A is include[1] (the dog), B is include[0] (the teddy): swapping roles fails
    wrong, _ = official([det("teddy bear", RIGHT), det("dog", TEDDY)], DOG_RIGHT_OF_TEDDY)
    assert not wrong.correct
    assert wrong.failing_clause == "position: expected dog right of teddy bear, found dog left of teddy bear"
    # overlapping -> fail
    ov, _ = official([det("teddy bear", TEDDY), det("dog", TEDDY)], DOG_RIGHT_OF_TEDDY)
    assert not ov.correct and "no clear relation" in ov.failing_clause
    # only the top-1 dog is placed; a less confident dog on the wrong side is ignored
    top, _ = official(
        [det("teddy bear", TEDDY), det("dog", RIGHT, 0.9), det("dog", LEFT, 0.5)], DOG_RIGHT_OF_TEDDY
    )
    assert top.correct
    # target clause failed -> the position clause fails too
    no_t, _ = official([det("dog", RIGHT)], DOG_RIGHT_OF_TEDDY)
    assert (
        not no_t.correct
        and no_t.reasons[1] == "position: no teddy bear matched, so dog cannot be right of it"
    )


def test_trap5_all_pairs_must_hold():
    meta = {
        "tag": "position",
        "include": [
            {"class": "teddy bear", "count": 2},
            {"class": "dog", "count": 1, "position": ["right of", 0]},
        ],
    }
    both_left = [
        det("teddy bear", (0, 0, 10, 10)),
        det("teddy bear", (0, 40, 10, 50)),
        det("dog", (40, 20, 50, 30)),
    ]
    assert official(both_left, meta)[0].correct
    straddle = [
        det("teddy bear", (0, 0, 10, 10)),
        det("teddy bear", (80, 0, 90, 10)),
        det("dog", (40, 0, 50, 10)),
    ]
    assert not official(straddle, meta)[0].correct


# ---------------------------------------------------------------- trap 6: aggregation
def test_trap6_overall_is_unweighted_mean_of_tag_accuracies():
    tags = ["single_object"] * 8 + ["counting"] * 2
    correct = [1.0] * 8 + [0.0, 0.0]
    per_tag = per_tag_accuracy(tags, correct)
    assert per_tag == {"single_object": 1.0, "counting": 0.0}
    assert overall_score(per_tag) == 0.5  # the image mean would be 0.8
    recs = [
        SampleRecord(i // 2, i % 2, c, {"tag": t, "prompt": f"p{i // 2}"})
        for i, (t, c) in enumerate(zip(tags, correct))
    ]
    s = aggregate_records(recs, name="geneval", version="v", engine="e", n_boot=300, seed=0)
    assert s.score == 0.5 and s.extra["image_accuracy"] == pytest.approx(0.8)
    assert s.extra["per_tag"] == per_tag and not s.extra["complete"]
    assert "position" in s.extra["tags_missing"]
    # every tag's accuracy is constant across resamples here, so the CI collapses on the point
    assert s.ci_low == pytest.approx(0.5) and s.ci_high == pytest.approx(0.5)
    assert math.isnan(overall_score({}))


# ---------------------------------------------------------------- trap 7: Flow-GRPO partial score
@pytest.mark.parametrize("n,expected", [(1, 1.0), (2, 0.0), (3, -1.0), (0, 0.0)])
def test_trap7_partial_single_object(n, expected):
    v = partial([det("bench", b) for b in boxes_at(n)], SINGLE_BENCH)
    assert v.score == pytest.approx(expected)
    assert v.correct is (n == 1)  # strict_correct: exact count even outside counting


@pytest.mark.parametrize("n,expected", [(2, 1.0), (3, 0.5), (1, 0.5), (5, -0.5), (0, 0.0)])
def test_trap7_partial_counting(n, expected):
    v = partial([det("clock", b) for b in boxes_at(n)], TWO_CLOCKS)
    assert v.score == pytest.approx(expected)


def test_trap7_partial_counting_uses_0_9_threshold():
    v = partial([det("clock", b, s) for b, s in zip(boxes_at(2), (0.95, 0.85))], TWO_CLOCKS)
    assert v.score == pytest.approx(0.5)


@pytest.mark.parametrize("color,n,expected", [("blue", 1, 1.0), ("red", 1, 0.5), ("blue", 0, 0.0)])
def test_trap7_partial_colors(color, n, expected):
    v = partial([det("fire hydrant", b, color=color) for b in boxes_at(n)], BLUE_HYDRANT)
    assert v.score == pytest.approx(expected)


@pytest.mark.parametrize(
    "dets,expected,terms",
    [
        ([det("teddy bear", TEDDY), det("dog", RIGHT)], 1.0, [1, 1, 1]),
        ([det("teddy bear", TEDDY), det("dog", LEFT)], 0.75, [1, 1, 0, 1]),  # the unconditional 1.0
        ([det("teddy bear", TEDDY)], 1 / 3, [1, 0, 0]),
        ([det("dog", RIGHT)], 1 / 3, [0, 1, 0]),
    ],
)
def test_trap7_partial_position(dets, expected, terms):
    v = partial(dets, DOG_RIGHT_OF_TEDDY)
    assert v.score == pytest.approx(expected) and v.terms == terms


def test_trap7_partial_color_attr_and_ignored_exclusions():
    meta = {
        "tag": "color_attr",
        "include": [
            {"class": "wine glass", "count": 1, "color": "purple"},
            {"class": "apple", "count": 1, "color": "black"},
        ],
    }
    assert partial([det("apple", color="black")], meta).score == pytest.approx(0.5)
    # exclusions are ignored by the reward server: only the include count term sees the extra clocks
    v = partial([det("clock", b) for b in boxes_at(3)], TWO_CLOCKS)
    assert v.terms == [0.5] and not v.correct


def test_trap7_quirk_flags_change_exactly_their_term():
    three = [det("bench", b) for b in boxes_at(3)]
    assert partial(three, SINGLE_BENCH, RewardQuirks(negative_count_term=False)).score == 0.0
    left = [det("teddy bear", TEDDY), det("dog", LEFT)]
    v = partial(left, DOG_RIGHT_OF_TEDDY, RewardQuirks(position_extra_one=False))
    assert v.terms == [1, 1, 0] and v.score == pytest.approx(2 / 3)
    v = partial([det("clock", b) for b in boxes_at(3)], TWO_CLOCKS, RewardQuirks(use_exclude=True))
    assert v.terms == [0.5, 0.0]
    assert partial(
        [det("clock", b) for b in boxes_at(2)], TWO_CLOCKS, RewardQuirks(use_exclude=True)
    ).terms == [1.0, 1.0]


def test_trap7_strict_correct_differs_from_official():
    two = [det("bench", b) for b in boxes_at(2)]
    assert official(two, SINGLE_BENCH)[0].correct and not partial(two, SINGLE_BENCH).correct
