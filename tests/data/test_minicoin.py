"""mini-CoIN generator: determinism, CoIN layout and formats, geometry by hand, readability at 32×32, safety."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dymoe.cli.main import main
from dymoe.data.minicoin import SCALES, TASK_NAMES, generate, verify
from dymoe.data.minicoin import writer as writer_mod
from dymoe.data.minicoin.glyphs import FONT, draw_text, text_mask
from dymoe.data.minicoin.tasks import grounding, textvqa, vqav2
from dymoe.data.minicoin.world import (
    COLOURS,
    LANDSCAPE,
    PALETTE,
    PORTRAIT,
    SHAPES,
    SQUARE,
    draw_object,
    shape_mask,
)
from dymoe.errors import DymoeError

SMALL_TRAIN, SMALL_TEST = SCALES["small"]


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def rows(root: Path, task: str, split: str) -> list[dict]:
    return json.loads((root / "Instructions_Original" / task / f"{split}.json").read_text())


def to_backbone_view(img: Image.Image, side: int = 32) -> Image.Image:
    """What a 32×32 backbone sees: pad to a centred square (LLaVA's `pad` aspect ratio), then resize."""
    w, h = img.size
    s = max(w, h)
    sq = Image.new(img.mode, (s, s), 0 if img.mode == "L" else (0, 0, 0))
    sq.paste(img, ((s - w) // 2, (s - h) // 2))
    return sq.resize((side, side), Image.BICUBIC if img.mode == "RGB" else Image.BILINEAR)


def nearest_colour(rgb: np.ndarray) -> str:
    return min(PALETTE, key=lambda c: float(np.sum((np.array(PALETTE[c], dtype=float) - rgb) ** 2)))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """One small mini-CoIN (seed 0), shared by the read-only tests of this module."""
    yaml_path = generate(tmp_path_factory.mktemp("mc") / "mini-coin", scale="small", seed=0)
    return yaml_path.parent


@pytest.fixture
def tiny_scale(monkeypatch):
    """A 3-train/2-test scale for tests that only exercise the writer's file handling."""
    monkeypatch.setitem(writer_mod.SCALES, "tiny", (3, 2))
    return "tiny"


# --------------------------------------------------------------------------------------------- determinism, counts
def test_same_seed_gives_identical_bytes_and_other_seed_differs(small, tiny_scale, tmp_path):
    again = generate(tmp_path / "again", scale="small", seed=0).parent
    assert tree_digest(again) == tree_digest(small)
    seed0 = generate(tmp_path / "seed0", scale=tiny_scale, seed=0).parent
    seed1 = generate(tmp_path / "seed1", scale=tiny_scale, seed=1).parent
    assert tree_digest(seed0) != tree_digest(seed1)
    # the layout is the same, only the content differs (image counts may differ: ScienceQA draws text-only rows)
    files = [sorted(p.relative_to(d).as_posix() for p in d.rglob("*.json")) for d in (seed0, seed1)]
    assert files[0] == files[1]
    assert (seed0 / "benchmark.yaml").read_bytes() == (seed1 / "benchmark.yaml").read_bytes()


def test_scale_table_and_counts(small, tiny_scale, tmp_path):
    documented = {"small": (160, 40), "default": (600, 100), "large": (3000, 300)}
    assert {k: SCALES[k] for k in documented} == documented
    manifest = json.loads((small / "MANIFEST.json").read_text())
    assert (manifest["scale"], manifest["seed"], manifest["version"]) == ("small", 0, writer_mod.GENERATOR_VERSION)
    for task in TASK_NAMES:
        assert len(rows(small, task, "train")) == SMALL_TRAIN
        assert len(rows(small, task, "test")) == SMALL_TEST
        n_img = sum("image" in r for s in ("train", "test") for r in rows(small, task, s))
        assert manifest["counts"][task] == {"train": SMALL_TRAIN, "test": SMALL_TEST, "images": n_img}
        assert len(list((small / "cl_dataset" / task / "images").glob("*.png"))) == n_img
    # counts follow the table for any scale
    tiny = generate(tmp_path / "tiny", scale=tiny_scale).parent
    assert all(len(rows(tiny, t, "train")) == 3 and len(rows(tiny, t, "test")) == 2 for t in TASK_NAMES)


def test_benchmark_yaml_is_the_documented_schema(small):
    data = yaml.safe_load((small / "benchmark.yaml").read_text())
    origin = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]
    assert {k: data[k] for k in ("name", "instruction_type", "data_root", "order")} == {
        "name": "mini-coin", "instruction_type": "origin", "data_root": ".", "order": "origin"}  # fmt: skip
    assert data["orders"] == {
        "origin": origin,
        "reverse": origin[::-1],
        "alphabet": ["GQA", "Grounding", "ImageNet", "OCRVQA", "ScienceQA", "TextVQA", "VizWiz", "VQAv2"],
    }
    scorers = ["sqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"]
    assert [t["name"] for t in data["tasks"]] == origin
    for t, scorer in zip(data["tasks"], scorers):
        assert t["scorer"] == scorer
        assert t["train"] == f"Instructions_Original/{t['name']}/train.json"
        assert t["test"] == f"Instructions_Original/{t['name']}/test.json"
        assert t["image_root"] == "cl_dataset"
        for rel in [t["train"], t["test"], *t.get("annotations", {}).values()]:
            assert (small / rel).is_file(), rel
    ann = {t["name"]: t.get("annotations") for t in data["tasks"]}
    assert ann["ScienceQA"] == {"problems": "cl_dataset/ScienceQA/problems.json",
                                "pid_splits": "cl_dataset/ScienceQA/pid_splits.json"}  # fmt: skip
    assert ann["TextVQA"] == {"annotations": "cl_dataset/TextVQA/TextVQA_0.5.1_val.json"}
    assert ann["GQA"] == {"questions": "cl_dataset/GQA/testdev_balanced_questions.json"}


# ----------------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("task", TASK_NAMES)
def test_train_and_test_rows_are_coin_format(small, task):
    for i, r in enumerate(rows(small, task, "train")):
        conv = r["conversations"]
        assert isinstance(r["id"], str) and len(conv) % 2 == 0 and conv
        assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert all(isinstance(c["value"], str) and c["value"] for c in conv)
        # "<image>\n" opens the first human turn exactly when the row has an image
        assert conv[0]["value"].startswith("<image>\n") == ("image" in r), (task, i)
        assert all("<image>" not in c["value"] for c in conv[1:])
    ids = [r["question_id"] for r in rows(small, task, "test")]
    assert len(set(ids)) == len(ids)
    truth = {"Grounding": {"answer_bbox", "size"}, "TextVQA": {"answer", "answers"}}.get(task, {"answer"})
    for r in rows(small, task, "test"):
        assert {"question_id", "text"} | truth <= set(r)
        assert "<image>" not in r["text"]
        assert set(r) <= {"question_id", "image", "text"} | truth
    for split in ("train", "test"):
        for r in rows(small, task, split):
            if "image" in r:
                path = small / "cl_dataset" / r["image"]
                assert path.resolve().is_relative_to((small / "cl_dataset").resolve())
                with Image.open(path) as im:
                    assert im.format == "PNG" and im.mode == "RGB" and im.size in (SQUARE, LANDSCAPE, PORTRAIT)


def test_prompts_end_with_the_coin_origin_instruction(small):
    ends = {"ScienceQA": "Answer with the option's letter from the given choices directly.",
            "Grounding": "Please provide the bounding box coordinate of the region this sentence describes."}  # fmt: skip
    for task in TASK_NAMES:
        tail = "\n" + ends.get(task, "Answer the question using a single word or phrase.")
        assert all(r["text"].endswith(tail) for r in rows(small, task, "test")), task
        assert all(c["value"].endswith(tail) for r in rows(small, task, "train") for c in r["conversations"][::2])


def test_scienceqa_half_text_only_and_side_files(small):
    train, test = rows(small, "ScienceQA", "train"), rows(small, "ScienceQA", "test")
    with_image = sum("image" in r for r in train + test) / len(train + test)
    assert 0.35 <= with_image <= 0.65
    problems = json.loads((small / "cl_dataset/ScienceQA/problems.json").read_text())
    splits = json.loads((small / "cl_dataset/ScienceQA/pid_splits.json").read_text())
    assert splits["test"] == [r["question_id"] for r in test]
    assert len(splits["train"]) == len(train) and not set(splits["train"]) & set(splits["test"])
    for r in test:
        p = problems[r["question_id"]]
        assert p["split"] == "test" and isinstance(p["answer"], int)
        assert "ABCDE"[p["answer"]] == r["answer"]
        assert (p["image"] is None) == ("image" not in r)
        # the options in the prompt are the choices, lettered in order
        options = re.findall(r"^([A-E])\. (.*)$", r["text"], flags=re.M)
        assert options == [("ABCDE"[i], c) for i, c in enumerate(p["choices"])]
        assert r["text"].startswith(p["question"] + "\n")


def test_textvqa_ten_noisy_answers_and_side_file(small):
    test = rows(small, "TextVQA", "test")
    ann = json.loads((small / "cl_dataset/TextVQA/TextVQA_0.5.1_val.json").read_text())["data"]
    assert [a["question_id"] for a in ann] == [r["question_id"] for r in test]
    noisy = 0
    for r, a in zip(test, ann):
        assert len(r["answers"]) == 10 and a["answers"] == r["answers"]
        word, count = Counter(r["answers"]).most_common(1)[0]
        assert word == r["answer"] and count >= 6
        noisy += count < 10
        assert r["text"].startswith(a["question"] + "\n")
    assert noisy > 0  # some annotator noise, as in TextVQA


def test_gqa_side_file_matches_test_rows(small):
    test = rows(small, "GQA", "test")
    questions = json.loads((small / "cl_dataset/GQA/testdev_balanced_questions.json").read_text())
    assert list(questions) == [r["question_id"] for r in test]
    for r in test:
        assert questions[r["question_id"]]["answer"] == r["answer"]
        assert r["text"].startswith(questions[r["question_id"]]["question"] + "\n")


def test_vqav2_has_multi_turn_training_rows(small):
    turns = Counter(len(r["conversations"]) // 2 for r in rows(small, "VQAv2", "train"))
    assert set(turns) == {1, 2} and 0.05 * SMALL_TRAIN < turns[2] < 0.4 * SMALL_TRAIN


def test_vizwiz_has_some_unanswerable(small):
    answers = [r["conversations"][1]["value"] for r in rows(small, "VizWiz", "train")]
    assert 0.1 < answers.count("unanswerable") / len(answers) < 0.4


def test_answer_vocabularies_overlap_and_styles_conflict(small):
    def words(task):
        return {w for s in ("train", "test") for r in rows(small, task, s) if "answer" in r for w in r["answer"].split()} | {
            w for r in rows(small, task, "train") for c in r["conversations"][1::2] for w in c["value"].split()}  # fmt: skip

    vqa, gqa, imagenet, ocr = words("VQAv2"), words("GQA"), words("ImageNet"), words("OCRVQA")
    shared = vqa & gqa & imagenet
    assert shared and shared <= set(COLOURS)
    assert {"yes", "no"} <= vqa & gqa
    assert {"Yes", "No"} <= ocr and not {"yes", "no"} & ocr  # OCR-VQA capitalises, VQAv2 does not
    assert set(SHAPES) & gqa & imagenet
    sqa = words("ScienceQA")
    assert sqa <= set("ABCDE")


# ------------------------------------------------------------------------------------------------ geometry by hand
def test_normalise_box_by_hand():
    # 64×48 (landscape): pad 8 px above and below → side 64; box x 10..30, y 4..20
    assert grounding.normalise_box((10, 4, 30, 20), LANDSCAPE) == (10 / 64, 12 / 64, 30 / 64, 28 / 64)
    assert grounding.format_box(grounding.normalise_box((10, 4, 30, 20), LANDSCAPE)) == "[0.16, 0.19, 0.47, 0.44]"
    # 48×64 (portrait): pad 8 px left and right
    assert grounding.format_box(grounding.normalise_box((10, 4, 30, 20), PORTRAIT)) == "[0.28, 0.06, 0.59, 0.31]"
    # square: no padding
    assert grounding.format_box(grounding.normalise_box((0, 32, 64, 64), SQUARE)) == "[0.00, 0.50, 1.00, 1.00]"


def test_grounding_boxes_match_the_rendered_object_in_the_padded_square():
    rng = np.random.default_rng(123)
    seen_sizes = set()
    for _ in range(30):
        s = grounding.make_sample(rng, "test")
        target, size = s.meta["target"], tuple(s.truth["size"])
        seen_sizes.add(size)
        # the object's pixels span exactly its placement box
        ys, xs = np.nonzero(np.asarray(shape_mask(target.shape, target.box, size)))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == target.box
        # the answer, scaled back by max(w, h), is the box shifted by the centring offset (±0.5 % rounding)
        w, h = size
        side = max(w, h)
        expected = np.array(target.box, dtype=float) + [(side - w) / 2, (side - h) / 2] * 2
        got = np.array([float(v) for v in s.truth["answer_bbox"].strip("[]").split(",")]) * side
        assert np.all(np.abs(got - expected) <= 0.005 * side + 1e-9)
        # and that region of the padded image holds the target's colour (or its pattern's contrast)
        padded = np.asarray(to_backbone_view(s.image, side))  # resize to side = no-op scale
        x0, y0, x1, y1 = (int(round(v)) for v in expected)
        region = padded[y0:y1, x0:x1].reshape(-1, 3).astype(float)
        colour = np.array(PALETTE[target.colour], dtype=float)
        assert np.mean(np.sum((region - colour) ** 2, axis=1) < 30**2) > 0.25
    assert {SQUARE, LANDSCAPE, PORTRAIT} <= seen_sizes


def test_grounding_objects_fill_distinct_grid_cells():
    rng = np.random.default_rng(5)
    for size in (SQUARE, LANDSCAPE, PORTRAIT):
        w, h = size
        cw, ch = w // 2, h // 2
        side_max = min(cw, ch) - 2  # square 30, landscape/portrait 22
        for n in (1, 2, 3, 4):
            for _ in range(20):
                boxes = grounding.cell_boxes(rng, size, n)
                cells = {(x0 // cw, y0 // ch) for x0, y0, _, _ in boxes}
                assert len(boxes) == n and len(cells) == n  # one object per cell
                for x0, y0, x1, y1 in boxes:
                    col, row = x0 // cw, y0 // ch
                    assert x1 - x0 == y1 - y0 and side_max - grounding.SIDE_SPREAD <= x1 - x0 <= side_max
                    assert col * cw <= x0 and x1 <= (col + 1) * cw and row * ch <= y0 and y1 <= (row + 1) * ch
                    # the centre sits within JITTER (+1 for the odd halves) of the cell's centre
                    assert abs((x0 + x1) / 2 - (col + 0.5) * cw) <= grounding.JITTER + 1
                    assert abs((y0 + y1) / 2 - (row + 0.5) * ch) <= grounding.JITTER + 1


def test_grounding_is_solved_by_finding_the_cell():
    """Whoever names the described object's cell and the image's aspect ratio can place a box that the CoIN scorer
    accepts (IoU > 0.5); the box of another object's cell never passes."""
    from dymoe.eval.scorers import score_grounding

    def cell_answer(obj, size: tuple[int, int]) -> str:
        """The box of a mid-sized object centred in ``obj``'s cell."""
        w, h = size
        cw, ch = w // 2, h // 2
        side = min(cw, ch) - 2 - grounding.SIDE_SPREAD // 2
        col, row = obj.box[0] // cw, obj.box[1] // ch
        x0, y0 = col * cw + (cw - side) // 2, row * ch + (ch - side) // 2
        return grounding.format_box(grounding.normalise_box((x0, y0, x0 + side, y0 + side), size))

    rng = np.random.default_rng(11)
    right, wrong, refs = [], [], []
    for i in range(200):
        s = grounding.make_sample(rng, "test")
        size = tuple(s.truth["size"])
        other = next(o for o in s.meta["objects"] if o is not s.meta["target"])
        right.append({"question_id": i, "text": cell_answer(s.meta["target"], size)})
        wrong.append({"question_id": i, "text": cell_answer(other, size)})
        refs.append({"question_id": i, **s.truth})
    assert score_grounding(right, refs).accuracy == 100.0
    assert score_grounding(wrong, refs).accuracy == 0.0


# --------------------------------------------------------------------------------------- readable at 32×32
def test_asked_colour_is_recoverable_at_32px():
    rng = np.random.default_rng(7)
    checked = 0
    while checked < 12:
        s = vqav2.make_sample(rng, "test")
        m = re.match(r"What color is the (\w+)\?", s.meta["question"])
        if not m:
            continue
        (obj,) = [o for o in s.meta["objects"] if o.shape == m.group(1)]
        small_img = np.asarray(to_backbone_view(s.image)).astype(float)
        small_mask = np.asarray(to_backbone_view(shape_mask(obj.shape, obj.box, s.image.size)))
        inside = small_mask > 250  # pixels fully covered by the object after downscaling
        assert inside.sum() >= 4
        assert nearest_colour(small_img[inside].mean(axis=0)) == s.answer == obj.colour
        checked += 1


def test_sign_word_is_recoverable_at_32px_by_template_matching():
    rng = np.random.default_rng(11)
    for _ in range(12):
        s = textvqa.make_sample(rng, "test")
        word, xy, sign = s.meta["word"], s.meta["text_xy"], s.meta["objects"][0]
        ink = PALETTE[textvqa.SIGNS[sign.colour]]

        def view_with(text: str, s=s, sign=sign, xy=xy, ink=ink) -> np.ndarray:
            img = s.image.copy()
            draw_object(img, sign)  # blank the sign, then write the candidate word on it
            draw_text(img, text.upper(), xy, scale=textvqa.SCALE, colour=ink, gap=textvqa.GAP)
            return np.asarray(to_backbone_view(img)).astype(float)

        seen = np.asarray(to_backbone_view(s.image)).astype(float)
        candidates = [w for w in textvqa.WORDS if len(w) == len(word)]
        dist = {w: float(np.sum((view_with(w) - seen) ** 2)) for w in candidates}
        best = sorted(dist, key=dist.get)
        assert best[0] == word and dist[word] == 0.0
        assert dist[best[1]] > 5000  # the runner-up word differs by clearly visible pixels


def test_font_glyphs_are_distinct_and_scaled_as_blocks():
    glyphs = {ch: g.tobytes() for ch, g in FONT.items()}
    assert len(set(glyphs.values())) == 26
    m = text_mask("HI", scale=3, gap=3)
    assert m.shape == (21, 5 * 3 * 2 + 3)
    # every font pixel is a solid 3×3 block; the gap column is empty
    assert np.array_equal(m[::3, :15:3], FONT["H"]) and not m[:, 15:18].any()
    assert np.array_equal(m[:, :15], np.kron(FONT["H"], np.ones((3, 3), dtype=bool)))


# ----------------------------------------------------------------------------------------------- safety, verify
def test_refuses_non_empty_dir_unless_forced(tiny_scale, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(DymoeError, match=r"out.*not empty.*--force"):
        generate(out, scale=tiny_scale)
    assert (out / "keep.txt").read_text() == "user data" and len(list(out.iterdir())) == 1
    generate(out, scale=tiny_scale, force=True)
    assert not (out / "keep.txt").exists() and verify(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(DymoeError, match="not a directory"):
        generate(tmp_path / "file", scale=tiny_scale, force=True)
    monkeypatch.chdir(out)
    with pytest.raises(DymoeError, match="current directory"):
        generate(tmp_path, scale=tiny_scale, force=True)
    with pytest.raises(DymoeError, match="unknown scale"):
        generate(tmp_path / "new", scale="huge")
    with pytest.raises(DymoeError, match="seed"):
        generate(tmp_path / "new", scale=tiny_scale, seed=-1)


def test_empty_existing_dir_is_accepted(tiny_scale, tmp_path):
    (tmp_path / "empty").mkdir()
    assert generate(tmp_path / "empty", scale=tiny_scale) == tmp_path / "empty" / "benchmark.yaml"


def test_interrupted_run_leaves_nothing(tiny_scale, tmp_path, monkeypatch):
    real = writer_mod._write_task

    def failing(root, k, task, *args):
        if k == 3:
            raise KeyboardInterrupt
        return real(root, k, task, *args)

    monkeypatch.setattr(writer_mod, "_write_task", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "out", scale=tiny_scale)
    assert list(tmp_path.iterdir()) == []


def test_verify_detects_corruption_missing_and_extra_files(small, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small, copy)
    assert verify(copy) == []
    png = sorted((copy / "cl_dataset/VQAv2/images").glob("*.png"))[0]
    data = bytearray(png.read_bytes())
    data[-20] ^= 0xFF
    png.write_bytes(bytes(data))
    (copy / "Instructions_Original/GQA/test.json").unlink()
    (copy / "stray.txt").write_text("x")
    problems = verify(copy)
    rel = png.relative_to(copy).as_posix()
    assert problems == [
        "Instructions_Original/GQA/test.json: missing",
        f"{rel}: sha256 mismatch (file changed or corrupted)",
        "stray.txt: not listed in MANIFEST.json",
    ]
    (copy / "MANIFEST.json").unlink()
    assert verify(copy) == [f"{copy / 'MANIFEST.json'}: missing"]


def test_cli_make_minicoin(tiny_scale, tmp_path, capsys):
    out = tmp_path / "mc"
    assert main(["make-minicoin", "--out", str(out), "--scale", tiny_scale, "--seed", "3"]) == 0
    assert f"wrote {out / 'benchmark.yaml'}" in capsys.readouterr().out
    assert json.loads((out / "MANIFEST.json").read_text())["seed"] == 3
    assert main(["make-minicoin", "--out", str(out), "--scale", tiny_scale]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and "--force" in err
    assert main(["make-minicoin", "--out", str(out), "--scale", tiny_scale, "--force"]) == 0


# ------------------------------------------------------------------------- through the project's loaders/scorers
def test_loads_and_scores_100_percent_through_coin_loaders(small):
    from dymoe.data.coin import load_train
    from dymoe.data.formats import load_test
    from dymoe.data.tasks import load_benchmark
    from dymoe.data.verify import verify_benchmark
    from dymoe.eval.scorers import SCORERS, load_annotations

    bench = load_benchmark(small / "benchmark.yaml")
    assert [t.name for t in bench.tasks] == list(TASK_NAMES)
    assert verify_benchmark(bench) == []
    for task in bench.tasks:
        train = load_train(task)
        assert len(train) == SMALL_TRAIN and not train.skipped
        samples = load_test(task)
        assert len(samples) == SMALL_TEST
        refs = [s.reference for s in samples]
        # predicting the ground truth scores 100 with the reference scorer and its strict variant
        preds = [{"question_id": s.question_id, "text": s.reference.get("answer_bbox", s.reference.get("answer"))}
                 for s in samples]  # fmt: skip
        for name in (task.scorer, f"{task.scorer}-strict"):
            result = SCORERS.get(name)(preds, refs, load_annotations(name, task.annotations))
            assert (result.accuracy, result.n) == (100.0, SMALL_TEST), (task.name, name)
        # and a constant wrong answer scores (almost) nothing
        wrong = [{"question_id": s.question_id, "text": "[0.90, 0.90, 0.91, 0.91]"} for s in samples]
        assert SCORERS.get(task.scorer)(wrong, refs, load_annotations(task.scorer, task.annotations)).accuracy < 10
