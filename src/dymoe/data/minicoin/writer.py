"""Write a generated mini-CoIN benchmark to disk in CoIN's layout, and verify it against its manifest.

Layout of ``out_dir``::

    benchmark.yaml                                  # the benchmark description read by dymoe.data.tasks
    MANIFEST.json                                   # scale, seed, generator version, counts, sha256 of every file
    Instructions_Original/<Task>/train.json         # LLaVA conversations
    Instructions_Original/<Task>/test.json          # {"question_id", "image"?, "text", answer fields}
    cl_dataset/<Task>/images/{train,test}_NNNNNN.png
    cl_dataset/ScienceQA/problems.json, pid_splits.json
    cl_dataset/TextVQA/TextVQA_0.5.1_val.json
    cl_dataset/GQA/testdev_balanced_questions.json

Everything is written into a temporary directory beside ``out_dir`` and renamed at the end, so an interrupted run
leaves nothing half-written. The same (scale, seed) gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dymoe.data.minicoin.tasks import TASK_NAMES, TASKS, Sample
from dymoe.errors import DymoeError

GENERATOR_VERSION = "3"  # bump whenever generated content changes: caches key on it (3: grounding boxes fill grid cells)
#: scale -> (train rows, test rows) per task
SCALES: dict[str, tuple[int, int]] = {"small": (160, 40), "default": (600, 100), "large": (3000, 300)}
SPLITS = ("train", "test")
INSTRUCTIONS_DIR = "Instructions_Original"
IMAGE_ROOT = "cl_dataset"
#: scorer name and annotation side files (relative to the data root) of each task
SCORERS: dict[str, str] = {
    "ScienceQA": "sqa",
    "TextVQA": "textvqa",
    "ImageNet": "imagenet",
    "GQA": "gqa",
    "VizWiz": "vizwiz",
    "Grounding": "grounding",
    "VQAv2": "vqav2",
    "OCRVQA": "ocrvqa",
}
ANNOTATIONS: dict[str, dict[str, str]] = {
    "ScienceQA": {
        "problems": f"{IMAGE_ROOT}/ScienceQA/problems.json",
        "pid_splits": f"{IMAGE_ROOT}/ScienceQA/pid_splits.json",
    },
    "TextVQA": {"annotations": f"{IMAGE_ROOT}/TextVQA/TextVQA_0.5.1_val.json"},
    "GQA": {"questions": f"{IMAGE_ROOT}/GQA/testdev_balanced_questions.json"},
}
#: question ids are numeric strings for the tasks whose annotation files are keyed by id (JSON keys are strings)
STRING_IDS = ("ScienceQA", "GQA")


def _dump_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def benchmark_yaml() -> str:
    """The text of ``benchmark.yaml`` (fixed: it does not depend on the scale or the seed)."""
    origin = list(TASK_NAMES)
    alphabet = sorted(origin, key=str.lower)
    lines = [
        "name: mini-coin",
        "instruction_type: origin",
        "data_root: .                    # relative to this YAML's directory",
        "order: origin",
        "orders:",
        f"  origin:   [{', '.join(origin)}]",
        f"  reverse:  [{', '.join(reversed(origin))}]",
        f"  alphabet: [{', '.join(alphabet)}]",
        "tasks:",
    ]
    for i, name in enumerate(origin):
        # the first entry carries the explanatory comments of the schema
        notes = ("   # relative to data_root", "", "                              # the JSON `image` fields are "
                 "relative to this (relative to data_root)") if i == 0 else ("", "", "")  # fmt: skip
        lines += [
            f"  - name: {name}",
            f"    train: {INSTRUCTIONS_DIR}/{name}/train.json{notes[0]}",
            f"    test: {INSTRUCTIONS_DIR}/{name}/test.json{notes[1]}",
            f"    image_root: {IMAGE_ROOT}{notes[2]}",
            f"    scorer: {SCORERS[name]}",
        ]
        if name in ANNOTATIONS:
            inner = ", ".join(f"{k}: {v}" for k, v in ANNOTATIONS[name].items())
            lines.append(f"    annotations: {{{inner}}}")
    return "\n".join(lines) + "\n"


def _train_row(task: str, i: int, sample: Sample, image: str | None) -> dict[str, Any]:
    conversations = []
    for turn, (prompt, answer) in enumerate(sample.turns):
        human = f"<image>\n{prompt}" if image is not None and turn == 0 else prompt
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    row: dict[str, Any] = {"id": f"{task.lower()}_{i:06d}"}
    if image is not None:
        row["image"] = image
    row["conversations"] = conversations
    return row


def _test_row(task: str, qid: int | str, sample: Sample, image: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"question_id": qid}
    if image is not None:
        row["image"] = image
    row["text"] = sample.turns[0][0]
    if task != "Grounding":  # Grounding's ground truth is answer_bbox + size only, as in CoIN
        row["answer"] = sample.answer
    row.update(sample.truth)
    return row


def _write_task(root: Path, k: int, task: str, scale: str, seed: int, bar: tqdm) -> dict[str, int]:
    """Generate and write both splits of task number ``k``; returns its counts."""
    make = TASKS.get(task)
    img_dir = root / IMAGE_ROOT / task / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    side: dict[str, list[tuple[Any, Sample, str | None]]] = {"train": [], "test": []}
    n_images = 0
    for s, split in enumerate(SPLITS):
        # an independent stream per (seed, task, split): a task's data does not depend on the other tasks
        rng = np.random.default_rng([seed, k, s])
        rows[split] = []
        for i in range(SCALES[scale][s]):
            sample = make(rng, split)
            image = None
            if sample.image is not None:
                image = f"{task}/images/{split}_{i:06d}.png"
                sample.image.save(root / IMAGE_ROOT / image, format="PNG")
                n_images += 1
            if split == "train":
                rows[split].append(_train_row(task, i, sample, image))
                pid: int | str = str(i + 1)  # ScienceQA-style problem id of a training row
            else:
                # test ids continue after the train ids (ScienceQA's pids are unique across splits)
                n = SCALES[scale][0] + i + 1
                pid = str(n) if task in STRING_IDS else n
                rows[split].append(_test_row(task, pid, sample, image))
            side[split].append((pid, sample, image))
            bar.update(1)
    for split in SPLITS:
        _dump_json(root / INSTRUCTIONS_DIR / task / f"{split}.json", rows[split])
    _write_side_files(root, task, side)
    return {"train": len(rows["train"]), "test": len(rows["test"]), "images": n_images}


def _write_side_files(root: Path, task: str, side: dict[str, list[tuple[Any, Sample, str | None]]]) -> None:
    """The original-dataset annotation files that CoIN's ScienceQA, TextVQA and GQA evaluators read."""
    base = root / IMAGE_ROOT / task
    if task == "ScienceQA":
        problems, pid_splits = {}, {}
        for split in SPLITS:
            pid_splits[split] = [pid for pid, _, _ in side[split]]
            for pid, sample, image in side[split]:
                m = sample.meta
                problems[pid] = {
                    "question": m["question"],
                    "choices": m["choices"],
                    "answer": m["answer_idx"],
                    "hint": m["context"],
                    "image": image,
                    "task": "closed choice",
                    "subject": "natural science",
                    "split": split,
                }
        _dump_json(base / "problems.json", problems)
        _dump_json(base / "pid_splits.json", pid_splits)
    elif task == "TextVQA":
        data = [
            {"question_id": qid, "question": s.meta["question"], "answers": s.truth["answers"],
             "image_id": Path(image).stem if image else None}
            for qid, s, image in side["test"]
        ]  # fmt: skip
        _dump_json(
            base / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "dataset_type": "val", "data": data}
        )
    elif task == "GQA":
        questions = {
            qid: {
                "question": s.meta["question"],
                "answer": s.answer,
                "imageId": Path(image).stem if image else None,
            }
            for qid, s, image in side["test"]
        }
        _dump_json(base / "testdev_balanced_questions.json", questions)


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DymoeError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DymoeError(f"--out {out}: directory is not empty; pass force=True (--force) to replace it")


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Make the finished folder ``tmp`` the output ``out`` (an existing ``out`` is replaced only under ``force``, and
    is moved aside before ``tmp`` takes its name, so ``out`` is always either the old or the new folder)."""
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    if out.exists():
        _prepare_out_dir(out, force)  # re-check: something may have appeared meanwhile
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, out)


def generate(
    out_dir: str | os.PathLike[str], *, scale: str = "default", seed: int = 0, force: bool = False
) -> Path:
    """Generate mini-CoIN into ``out_dir``; returns the path of its ``benchmark.yaml``.

    Refuses a non-empty ``out_dir`` unless ``force`` (which replaces it). Writes into a temporary directory beside
    ``out_dir`` and renames it into place at the end.
    """
    if scale not in SCALES:
        raise DymoeError(f"unknown scale {scale!r}; expected one of: {', '.join(SCALES)}")
    if not isinstance(seed, int) or seed < 0:
        raise DymoeError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(os.path.abspath(out_dir))
    if force and Path.cwd().is_relative_to(out):
        raise DymoeError(f"--out {out}: refusing to replace the current directory or one of its parents")
    _prepare_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts = {}
        total = sum(SCALES[scale]) * len(TASK_NAMES)
        with tqdm(total=total, desc=f"mini-CoIN ({scale})", unit="sample", disable=None) as bar:
            for k, task in enumerate(TASK_NAMES):
                bar.set_postfix_str(task)
                counts[task] = _write_task(tmp, k, task, scale, seed, bar)
        (tmp / "benchmark.yaml").write_text(benchmark_yaml(), encoding="utf-8")
        manifest = {
            "generator": "dymoe.data.minicoin",
            "version": GENERATOR_VERSION,
            "scale": scale,
            "seed": seed,
            "counts": counts,
            "files": {rel: _sha256(tmp / rel) for rel in _all_files(tmp)},
        }
        _dump_json(tmp / "MANIFEST.json", manifest)
        _move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "benchmark.yaml"


def verify(out_dir: str | os.PathLike[str]) -> list[str]:
    """Check ``out_dir`` against its ``MANIFEST.json``; returns the problems found (empty list = intact).

    Reports missing files, files whose sha256 differs, and files that the manifest does not list.
    """
    root = Path(out_dir)
    manifest_path = root / "MANIFEST.json"
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing"]
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return [f"{manifest_path}: unreadable manifest ({err})"]
    problems = []
    for rel, digest in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif _sha256(path) != digest:
            problems.append(f"{rel}: sha256 mismatch (file changed or corrupted)")
    listed = set(files) | {"MANIFEST.json"}
    problems += [f"{rel}: not listed in MANIFEST.json" for rel in _all_files(root) if rel not in listed]
    return problems
