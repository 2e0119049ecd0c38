"""Write mini-domains to disk in the layout of ``configs/benchmarks/smoe3.yaml`` and verify it against its manifest.

Layout of ``out_dir``::

    benchmark.yaml            # the smoe3 schema: Medicine -> Chart -> Math, training files and evaluation sets
    MANIFEST.json             # generator, version, scale, seed, counts, sha256 of every file
    medicine/images/{train,test}_NNNNNN.png, medicine/med_vqa_{train,test}.json, medicine/med_caption_train.json
    chart/images/..., chart/chartqa_{train,test}.json, chart/chart2table_{train,test}.json,
        chart/chart2text_{train,test}.json
    math/images/..., math/math_{train,test}.json

Training rows are LLaVA conversations; test rows carry what the real benchmark's scorers read (``answer`` and
``answer_type`` for ``medvqa``, ``answer`` for ``chartqa-relaxed`` / ``bleu4``, ``table`` for ``chart-table-rms``,
``answer`` and ``dataset`` for ``math``). Everything is written into a temporary directory and renamed into place,
and the same (scale, seed) gives byte-identical files (:func:`verify` checks them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dymoe.data.minicoin.writer import (
    _all_files,
    _dump_json,
    _move_into_place,
    _prepare_out_dir,
    _sha256,
    verify,
)
from dymoe.data.minidomains.domains import MAKERS
from dymoe.errors import DymoeError

GENERATOR_VERSION = "2"  # 2: two questions per medical picture and math figure  # bump whenever generated content changes: caches key on it
#: scale -> (training pictures, test pictures) per domain
SCALES: dict[str, tuple[int, int]] = {"small": (64, 16), "default": (200, 40), "large": (1000, 150)}
DOMAINS = ("Medicine", "Chart", "Math")
#: per domain: its folder and, per row kind, (file stem, evaluation set name or None = training only, scorer,
#: max_new_tokens)
FILES: dict[str, tuple[str, dict[str, tuple[str, str | None, str | None, int]]]] = {
    "Medicine": ("medicine", {"vqa": ("med_vqa", "ScanVQA", "medvqa", 8),
                              "caption": ("med_caption", None, None, 0)}),
    "Chart": ("chart", {"qa": ("chartqa", "ChartQA", "chartqa-relaxed", 6),
                        "table": ("chart2table", "Chart-to-Table", "chart-table-rms", 40),
                        "text": ("chart2text", "Chart-to-Text", "bleu4", 40)}),
    "Math": ("math", {"math": ("math", "MWP&GPS", "math", 6)}),
}


def benchmark_yaml() -> str:
    """The text of ``benchmark.yaml`` (fixed: it does not depend on the scale or the seed)."""
    lines = [
        "# mini-domains: the embedded miniature of SMoE's Medicine -> Chart -> Math benchmark (dymoe make-minidomains)",
        "name: mini-domains",
        "instruction_type: origin",
        "data_root: .                    # relative to this YAML's directory",
        "order: origin",
        "tasks:",
    ]
    for name in DOMAINS:
        folder, kinds = FILES[name]
        lines += [f"  - name: {name}", f"    image_root: {folder}", "    train:"]
        lines += [f"      - {{path: {folder}/{stem}_train.json, source: {stem}}}" for stem, *_ in kinds.values()]
        lines.append("    eval:")
        lines += [f"      - {{name: {es}, path: {folder}/{stem}_test.json, scorer: {scorer}, max_new_tokens: {n}}}"
                  for stem, es, scorer, n in kinds.values() if es]
    return "\n".join(lines) + "\n"


def _write_domain(root: Path, k: int, name: str, scale: str, seed: int, bar: tqdm) -> dict[str, int]:
    folder, kinds = FILES[name]
    make = MAKERS[name]
    counts: dict[str, int] = {}
    for s, split in enumerate(("train", "test")):
        rng = np.random.default_rng([seed, k, s])  # an independent stream per (seed, domain, split)
        rows: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for i in range(SCALES[scale][s]):
            item = make(rng)
            image = f"images/{split}_{i:06d}.png"
            (root / folder / "images").mkdir(parents=True, exist_ok=True)
            item.image.save(root / folder / image, format="PNG")
            for kind, found in item.rows.items():
                for j, row in enumerate(found):
                    rid = f"{folder}-{kinds[kind][0]}-{split}-{i:06d}-{j}"
                    if split == "train":
                        rows[kind].append({"id": rid, "image": image, "conversations": [
                            {"from": "human", "value": f"<image>\n{row.prompt}"}, {"from": "gpt", "value": row.answer}]})
                    elif kinds[kind][1]:
                        rows[kind].append({"question_id": rid, "image": image, "text": row.prompt, **row.reference})
            bar.update(1)
        for kind, (stem, es, _, _) in kinds.items():
            if split == "train" or es:
                _dump_json(root / folder / f"{stem}_{split}.json", rows[kind])
                counts[f"{stem}_{split}"] = len(rows[kind])
    return counts


def generate(out_dir: str | os.PathLike[str], *, scale: str = "small", seed: int = 0, force: bool = False) -> Path:
    """Generate mini-domains into ``out_dir``; returns the path of its ``benchmark.yaml``.

    Refuses a non-empty ``out_dir`` unless ``force`` (which replaces it); writes into a temporary directory beside
    it and renames it into place at the end.
    """
    if scale not in SCALES:
        raise DymoeError(f"unknown scale {scale!r}; expected one of: {', '.join(SCALES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DymoeError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(os.path.abspath(out_dir))
    if force and Path.cwd().is_relative_to(out):
        raise DymoeError(f"--out {out}: refusing to replace the current directory or one of its parents")
    _prepare_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts = {}
        with tqdm(total=sum(SCALES[scale]) * len(DOMAINS), desc=f"mini-domains ({scale})", unit="picture",
                  disable=None) as bar:
            for k, name in enumerate(DOMAINS):
                counts[name] = _write_domain(tmp, k, name, scale, seed, bar)
        (tmp / "benchmark.yaml").write_text(benchmark_yaml(), encoding="utf-8")
        _dump_json(tmp / "MANIFEST.json", {
            "generator": "dymoe.data.minidomains", "version": GENERATOR_VERSION, "scale": scale, "seed": seed,
            "counts": counts, "files": {rel: _sha256(tmp / rel) for rel in _all_files(tmp)}})
        _move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "benchmark.yaml"


__all__ = ["DOMAINS", "GENERATOR_VERSION", "SCALES", "benchmark_yaml", "generate", "verify"]
