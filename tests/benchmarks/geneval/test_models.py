"""Real model code paths (transformers Mask2Former + CLIP) on tiny random models built from configs
and loaded through the same ``from_pretrained`` calls as real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.errors import BenchmarkError, ModelUnavailableError
from benchmarks.geneval.color import (
    COLOR_TEMPLATES,
    ClipColorClassifier,
    make_color_crop,
    openai_clip_preprocess,
)
from benchmarks.geneval.detector import (
    Mask2FormerDetector,
    coco_label_map,
    mask_to_box,
    mmdet_instance_postprocess,
)
from benchmarks.geneval.prompts import COLORS, object_names
from benchmarks.geneval.rules import Detection
from benchmarks.geneval.testing import make_test_benchmark


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models


def rand_image(seed, size=(96, 80)):
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )


# ----------------------------------------------------------------------------- label mapping
def test_coco_label_map_names_aliases_and_errors():
    names = list(object_names())
    hf = [
        {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(n, n)
        for n in names
    ]
    m = coco_label_map(dict(enumerate(hf)))
    assert m == dict(enumerate(names))
    # panoptic-style extra labels are ignored; order of ids does not matter
    m2 = coco_label_map(
        {i + 5: n for i, n in enumerate(reversed(hf))} | {0: "sky-other-merged", 1: "tvmonitor"}
    )
    assert m2[5] == "toothbrush" and m2[1] == "tv" and 0 not in m2
    assert coco_label_map({i: f"LABEL_{i}" for i in range(80)}) == dict(enumerate(names))
    with pytest.raises(BenchmarkError, match="cover only 1 of the 80 COCO classes; missing: airplane"):
        coco_label_map({0: "person"})
    with pytest.raises(BenchmarkError, match="generic labels"):
        coco_label_map({0: "LABEL_0", 1: "LABEL_1"})


# ----------------------------------------------------------------------------- post-processing
def test_mask_to_box_is_mmdet_mask2bbox():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:21] = True  # rows 5..8, cols 10..20
    assert mask_to_box(mask) == (10.0, 5.0, 21.0, 9.0)
    assert mask_to_box(np.zeros((4, 4), bool)) == (0.0, 0.0, 0.0, 0.0)


def test_mmdet_instance_postprocess_scores_and_masks():
    # 2 queries, 3 classes (+ no-object). Query 0: class 1 with p ~ 0.97; query 1: mostly no-object.
    cls = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 6.0]])
    masks = torch.full((2, 4, 4), -8.0)
    masks[0, 1:3, 1:3] = 8.0  # a 2x2 blob at 1/4 resolution
    inst = mmdet_instance_postprocess(
        cls, masks, padded_hw=(16, 16), valid_hw=(16, 16), orig_hw=(16, 16), max_per_image=6, min_score=0.0
    )
    assert len(inst) == 6  # top-6 (query, class) pairs
    best = max(inst, key=lambda t: t[1])
    label, score, mask = best
    assert label == 1 and mask.shape == (16, 16) and mask.dtype == bool
    p = torch.softmax(cls[0], -1)[1].item()
    up = torch.nn.functional.interpolate(
        masks[None, :1], size=(16, 16), mode="bilinear", align_corners=False
    )[0, 0]
    expect = p * (up.sigmoid() * (up > 0)).sum().item() / ((up > 0).sum().item() + 1e-6)
    assert score == pytest.approx(expect, rel=1e-5)
    assert np.array_equal(mask, (up > 0).numpy())
    # pruning by class probability never removes a pair whose final score could pass the threshold
    pruned = mmdet_instance_postprocess(
        cls, masks, padded_hw=(16, 16), valid_hw=(16, 16), orig_hw=(16, 16), max_per_image=6, min_score=0.3
    )
    assert sorted(s for _, s, _ in pruned if s > 0.3) == sorted(s for _, s, _ in inst if s > 0.3)
    # valid region: padding is cropped away before resizing to the original size
    crop = mmdet_instance_postprocess(
        cls, masks, padded_hw=(16, 16), valid_hw=(8, 8), orig_hw=(4, 4), max_per_image=1, min_score=0.0
    )
    assert crop[0][2].shape == (4, 4)


# ----------------------------------------------------------------------------- tiny detector
def test_tiny_detector_real_loading_and_detection(tiny):
    det_path, _, _ = tiny
    d = Mask2FormerDetector(det_path, device="cpu", shortest_edge=64, longest_edge=96, min_score=0.3)
    images = [rand_image(0, (70, 50)), rand_image(1, (96, 80))]
    out = d.detect(images)
    assert len(out) == 2
    # without pruning: all top-100 (query, class) pairs, mmdet-style (here 8 queries x 80 classes)
    everything = Mask2FormerDetector(det_path, device="cpu", shortest_edge=64, longest_edge=96).detect(
        images[:1]
    )[0]
    assert len(everything) == 100 and {x.class_name for x in everything} > {"dog"}
    assert sorted(x.score for x in everything if x.score > 0.3) == pytest.approx(
        sorted(x.score for x in out[0])
    )
    for im, dets in zip(images, out):
        assert dets, "the tiny detector is biased to find dogs"
        for x in dets:
            assert isinstance(x, Detection) and x.class_name == "dog"
            assert x.mask.shape == (im.height, im.width) and x.mask.dtype == bool
            assert x.box == mask_to_box(x.mask) and 0.0 <= x.score <= 1.0
    # deterministic; single-image calls equal the batch for same-size images
    same = [rand_image(2), rand_image(3)]
    batch = d.detect(same)
    single = [d.detect([im])[0] for im in same]
    for a, b in zip(batch, single):
        assert [x.score for x in a] == pytest.approx([x.score for x in b], abs=1e-5)
    hf = Mask2FormerDetector(
        det_path, device="cpu", shortest_edge=64, longest_edge=96, postprocess="hf", min_score=0.3
    )
    assert all(x.class_name == "dog" for x in hf.detect(same)[0])


def test_missing_detector_weights_name_path_and_howto(tmp_path):
    missing = tmp_path / "no-such-mask2former"
    with pytest.raises(ModelUnavailableError) as e:
        Mask2FormerDetector(missing, device="cpu").detect([rand_image(0)])
    msg = str(e.value)
    assert str(missing) in msg and "download" in msg and "AWM_GENEVAL_DETECTOR" in msg
    with pytest.raises(ModelUnavailableError, match="no-such-clip"):
        ClipColorClassifier(tmp_path / "no-such-clip", device="cpu").classify([rand_image(0)], ["dog"])
    with pytest.raises(BenchmarkError, match="postprocess"):
        Mask2FormerDetector(missing, postprocess="nms")


# ----------------------------------------------------------------------------- colour crops
def test_color_crop_masks_onto_gray_and_crops_to_rounded_box():
    arr = np.zeros((40, 50, 3), np.uint8)
    arr[..., 0] = 200
    image = Image.fromarray(arr)
    mask = np.zeros((40, 50), bool)
    mask[12:20, 12:18] = True
    crop = make_color_crop(image, Detection("dog", (10.4, 10.6, 20.5, 30.2), 0.9, mask))
    # PIL rounds the float box: (10, 11, 20, 30)
    assert crop.size == (10, 19)
    c = np.asarray(crop)
    assert (c[0, 0] == 153).all()  # outside the mask: #999
    assert tuple(c[12 - 11, 12 - 10]) == (200, 0, 0)  # inside: original pixels
    no_mask = make_color_crop(image, Detection("dog", (0, 0, 5, 5), 0.9, None))
    assert tuple(np.asarray(no_mask)[0, 0]) == (200, 0, 0)
    with pytest.raises(BenchmarkError, match="mask"):
        make_color_crop(image, Detection("dog", (0, 0, 5, 5), 0.9, np.zeros((3, 3), bool)))


def test_openai_preprocess_matches_open_clip_rules():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from benchmarks.geneval.color import OPENAI_MEAN, OPENAI_STD

    hf = CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD),
    )  # fmt: skip
    for size in ((300, 200), (224, 224), (20, 13)):
        im = rand_image(5, size)
        np.testing.assert_allclose(
            openai_clip_preprocess(im), hf(images=im, return_tensors="np")["pixel_values"][0], atol=1e-5
        )
    # torchvision (open_clip) TRUNCATES the long side: 100x457 -> 224x1023 (HF would round to 1024)
    tall = Image.new("RGB", (100, 457))
    arr = np.zeros((457, 100, 3), np.uint8)
    arr[400:, :, 2] = 255  # blue from row 400 on: after the resize the crop starts at round(799/2) = 400
    tall = Image.fromarray(arr)
    out = openai_clip_preprocess(tall)
    assert out.shape == (3, 224, 224)
    ref = tall.resize((224, 1023), Image.BICUBIC).crop((0, 400, 224, 624))
    expect = (np.asarray(ref, np.float32) / 255 - np.array(OPENAI_MEAN, np.float32)) / np.array(
        OPENAI_STD, np.float32
    )
    np.testing.assert_allclose(out, expect.transpose(2, 0, 1), atol=1e-5)


# ----------------------------------------------------------------------------- tiny CLIP
def test_zero_shot_weights_normalise_each_template_then_mean_then_renorm(tiny):
    _, clip_path, _ = tiny
    clf = ClipColorClassifier(clip_path, device="cpu")
    w = clf.text_classifier("fire hydrant")
    assert tuple(w.shape) == (16, 10)
    model, tok = clf._model, clf._tokenizer
    cols, naive = [], []
    with torch.no_grad():
        for c in COLORS:
            texts = [t.format(c=c, classname="fire hydrant") for t in COLOR_TEMPLATES]
            assert texts[0] == f"a photo of a {c} fire hydrant" and texts[2] == f"a photo of a {c} object"
            ids = tok(texts, padding=True, return_tensors="pt")
            e = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
            e = e if isinstance(e, torch.Tensor) else e.pooler_output
            m = torch.nn.functional.normalize(e, dim=-1).mean(0)
            cols.append(m / m.norm())
            naive.append(e.mean(0) / e.mean(0).norm())
    torch.testing.assert_close(w, torch.stack(cols, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(w, torch.stack(naive, 1), atol=1e-4)
    assert torch.allclose(w.norm(dim=0), torch.ones(10), atol=1e-5)


def test_clip_classify_is_argmax_and_batch_invariant(tiny):
    _, clip_path, _ = tiny
    clf = ClipColorClassifier(clip_path, device="cpu", batch_size=2)
    crops = [rand_image(i, (30 + i, 20)) for i in range(5)]
    names = ["dog", "cat", "dog", "dog", "cat"]
    got = clf.classify(crops, names)
    assert len(got) == 5 and set(got) <= set(COLORS)
    assert [clf.classify([c], [n])[0] for c, n in zip(crops, names)] == got
    size = clf.image_size
    with torch.no_grad():
        for crop, name, colour in zip(crops, names, got):
            f = clf._model.get_image_features(
                pixel_values=torch.from_numpy(openai_clip_preprocess(crop, size))[None]
            )
            f = f if isinstance(f, torch.Tensor) else f.pooler_output
            logits = torch.nn.functional.normalize(f, dim=-1) @ clf.text_classifier(name)
            assert COLORS[int(logits.argmax())] == colour
    assert clf.classify([], []) == []
    with pytest.raises(BenchmarkError):
        clf.classify(crops, names[:2])


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_colour_clause_with_tiny_models(tiny):
    _, _, root = tiny
    bench = make_test_benchmark(root)
    im = rand_image(11)
    probe = {
        "tag": "colors",
        "include": [{"class": "dog", "count": 1, "color": "red"}],
        "prompt": "a photo of a red dog",
    }
    rec = bench.score_batch([im], [probe["prompt"]], [probe])[0]
    assert rec["detections"]["dog"], rec
    predicted = rec["colors"]["0"][0]
    assert predicted in COLORS
    assert rec["correct"] is (predicted == "red")
    other = next(c for c in COLORS if c != predicted)
    for colour, ok in ((predicted, True), (other, False)):
        prompt = f"a photo of {'an' if colour[0] in 'aeiou' else 'a'} {colour} dog"
        meta = {**probe, "include": [{"class": "dog", "count": 1, "color": colour}], "prompt": prompt}
        r = bench.score_batch([im], [prompt], [meta])[0]
        assert r["correct"] is ok and r["score"] == float(ok)
        if not ok:
            assert r["failing_clause"].startswith(f"colors: expected 1 {colour} dog, found 0 {colour}")
    # single_object dog: found (extra dogs are allowed by the official rule)
    dog = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    assert bench.score_batch([im], [dog["prompt"]], [dog])[0]["correct"] is True
    st = bench.check_models()
    assert st.available and str(root) in st.detail
