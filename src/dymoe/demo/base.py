"""The pretrained demo base: the tiny LLaVA pretrained (full weights) on captions of mini-CoIN's visual world.

It plays the role of the instruction-untuned LLaVA-v1.5 base of the papers: it has seen images of the same world
described in words (:mod:`dymoe.demo.captions`), never the eight tasks' questions, so continual instruction tuning
starts from a model that sees but has not been taught to answer.

Recipe (:class:`DemoBaseConfig`):

1. a byte-level BPE tokenizer trained on mini-CoIN's texts (prompts and answers of all eight task generators,
   drawn from their own random streams, not the generated benchmark's rows), the captions and the tiny factory's
   default corpus;
2. the tiny LLaVA of ``preset`` (:func:`dymoe.models.tiny.make_tiny_llava`) with random weights;
3. full-weight training (vision tower, projector and language model) on ``num_scenes`` caption samples for
   ``steps`` AdamW steps (linear warmup, cosine decay, gradient clipping), through the runner's own
   :class:`~dymoe.data.collate.VLMCollator` and chat template, so the text is exactly
   ``USER: <image>\\nDescribe the image. ASSISTANT: <caption></s>`` with loss on the caption only;
4. ``save_pretrained`` of the model and processor plus ``MANIFEST.json`` (build config, cache key, training
   summary, sha256 of every file).

:func:`build_demo_base` caches the result under ``<cache>/demo-base/<key>/`` (``key`` hashes the build config) and
reuses it only if every file matches the manifest; a corrupted or incomplete folder is rebuilt. Everything is
built in a temporary folder beside the target and renamed into place, so an interrupted build leaves nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dymoe.cache import cache_dir
from dymoe.data.coin import TrainSample
from dymoe.data.collate import VLMCollator
from dymoe.data.images import background_from_mean, expand2square
from dymoe.demo.captions import CaptionSample, caption_samples
from dymoe.errors import ConfigError, DymoeError

__all__ = [
    "BUILD_VERSION",
    "DemoBaseConfig",
    "PACKAGED",
    "build_demo_base",
    "export_demo_base",
    "demo_base_dir",
    "tokenizer_corpus",
    "verify_demo_base",
]

#: bump when the recipe changes in a way the config does not capture (changes every cache key)
BUILD_VERSION = "2"  # 2: focused descriptions in the captions, demo preset at 64x64
MANIFEST = "MANIFEST.json"
#: the base of the default config as shipped with dymoe (so that ``make demo`` on a fresh clone need not spend
#: its budget pretraining); refresh it with ``dymoe prepare-demo --force --export src/dymoe/demo/assets/demo-base``
PACKAGED = Path(__file__).parent / "assets" / "demo-base"


@dataclass(frozen=True)
class DemoBaseConfig:
    """Everything that determines the demo base; its hash is the cache key.

    Attributes:
        preset: tiny LLaVA preset (:data:`dymoe.models.tiny.PRESETS`).
        seed: seeds the weights, the caption stream, the tokenizer corpus and the batch order.
        steps: optimizer steps of caption pretraining.
        batch_size: caption samples per step.
        lr: peak AdamW learning rate (linear warmup over ``warmup_steps``, then cosine to 10% of it).
        warmup_steps: warmup length.
        weight_decay: AdamW weight decay.
        num_scenes: distinct caption samples (cycled in a seeded order when ``steps * batch_size`` exceeds it).
        max_length: token budget per sample (the 64 image tokens included).
        corpus_per_task: samples drawn from each mini-CoIN task generator for the tokenizer corpus.
        held_out: extra caption samples, never trained on, for the token accuracy before/after in the manifest.
    """

    preset: str = "demo"
    seed: int = 0
    steps: int = 2500
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    num_scenes: int = 16000
    max_length: int = 192
    corpus_per_task: int = 300
    held_out: int = 128

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_scenes", "max_length", "held_out"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo base {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"demo base lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain mapping, with the recipe version."""
        return {"version": BUILD_VERSION, **dataclasses.asdict(self)}

    @property
    def key(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON of :meth:`to_dict`."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def demo_base_dir(config: DemoBaseConfig) -> Path:
    """Where the base of ``config`` is cached: ``<cache>/demo-base/<preset>-<key>``."""
    return cache_dir() / "demo-base" / f"{config.preset}-{config.key}"


# ---------------------------------------------------------------------------------------------------- corpus


def tokenizer_corpus(config: DemoBaseConfig, captions: list[CaptionSample]) -> Iterator[str]:
    """Texts the tokenizer is trained on: every mini-CoIN task's prompts and answers, the captions, the chat
    format, and the tiny factory's default corpus (so that any English text still tokenises sensibly)."""
    from dymoe.data.minicoin.tasks import TASK_NAMES, TASKS
    from dymoe.models.tiny import default_corpus

    for k, name in enumerate(TASK_NAMES):
        make = TASKS.get(name)
        rng = np.random.default_rng([config.seed, 104729, k])  # not the benchmark's streams ([seed, k, split])
        for _ in range(config.corpus_per_task):
            for prompt, answer in make(rng, "train").turns:
                yield f"USER: <image>\n{prompt} ASSISTANT: {answer}</s>"
    for s in captions:
        yield f"USER: {'<image>' + chr(10) if s.image is not None else ''}{s.prompt} ASSISTANT: {s.caption}</s>"
    yield from default_corpus()


# ---------------------------------------------------------------------------------------------------- training


class _CaptionCollator(VLMCollator):
    """:class:`VLMCollator` over in-memory PIL images, memoising each sample's encoding by id."""

    def __init__(self, processor: Any, *, max_length: int):
        super().__init__(processor, max_length=max_length)
        self._cache: dict[str, Any] = {}

    def _pixels(self, image, where: str):
        if self.pad_to_square:
            image = expand2square(image, background_from_mean(self.processor.image_processor.image_mean))
        return image

    def encode(self, sample: TrainSample):
        if sample.id not in self._cache:
            self._cache[sample.id] = super().encode(sample)
        return self._cache[sample.id]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine from 1 to 0.1 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of indices into ``range(n)``: seeded epochs without replacement."""
    g = np.random.default_rng([seed, 31337])
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += g.permutation(n).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


@torch.no_grad()
def _token_accuracy(model, collator, samples: list[TrainSample], device, batch_size: int) -> float:
    """Teacher-forced next-token accuracy on the caption tokens of ``samples`` (percent)."""
    model.eval()
    right = total = 0
    for i in range(0, len(samples), batch_size):
        batch = {k: v.to(device) for k, v in collator(samples[i : i + batch_size]).items()}
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # [B, T, V]
        pred = logits[:, :-1].argmax(-1)  # [B, T-1]
        target = batch["labels"][:, 1:]  # [B, T-1]
        mask = target != -100
        right += int((pred[mask] == target[mask]).sum())
        total += int(mask.sum())
    return 100.0 * right / max(total, 1)


def _pretrain(folder: Path, config: DemoBaseConfig, samples: list[TrainSample], held_out: list[TrainSample],
              progress: bool) -> dict[str, Any]:
    """Load the random tiny LLaVA in ``folder``, pretrain it on ``samples`` and save it back; returns a summary."""
    from dymoe.models.llava import load_backbone

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_backbone(folder, dtype="float32", device=device)
    collator = _CaptionCollator(processor, max_length=config.max_length)
    for s in tqdm(samples + held_out, desc="demo base: encoding captions", unit="sample", disable=not progress):
        collator.encode(s)
    if collator.num_dropped:
        raise DymoeError(f"demo base: {collator.num_dropped} caption samples do not fit max_length={config.max_length}")
    eval_batch = max(config.batch_size, 32)
    acc_before = _token_accuracy(model, collator, held_out, device, eval_batch)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.warmup_steps, config.steps)
    )
    torch.manual_seed(config.seed)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(_batches(len(samples), config.batch_size, config.steps, config.seed), total=config.steps,
               desc="demo base: caption pretraining", unit="step", disable=not progress)
    for step, idx in enumerate(bar):
        batch = {k: v.to(device) for k, v in collator([samples[i] for i in idx]).items()}
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise DymoeError(f"demo base pretraining diverged at step {step} (loss {loss.item()}); lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    seconds = time.perf_counter() - start
    acc_after = _token_accuracy(model, collator, held_out, device, eval_batch)
    model.eval()
    model.to("cpu")
    for path in folder.iterdir():  # replace the random weights
        if path.is_file():
            path.unlink()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tail = losses[-max(1, len(losses) // 20):]
    return {
        "device": str(device),
        "train_seconds": round(seconds, 1),
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(tail) / len(tail), 4),
        "held_out_token_accuracy_before": round(acc_before, 2),
        "held_out_token_accuracy_after": round(acc_after, 2),
        "held_out_samples": len(held_out),
    }


# ---------------------------------------------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def verify_demo_base(path: str | os.PathLike, config: DemoBaseConfig | None = None) -> list[str]:
    """Check a demo base folder against its ``MANIFEST.json``; returns the problems (empty list = intact).

    Reports a missing or unreadable manifest, a manifest of another build config (when ``config`` is given),
    missing files, sha256 mismatches and files the manifest does not list.
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing"]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = dict(manifest["files"])
        built = manifest["config"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        return [f"{manifest_path}: unreadable manifest ({err})"]
    problems = []
    if config is not None and built != config.to_dict():
        problems.append(f"{manifest_path}: built with another config ({built}), expected {config.to_dict()}")
    for rel, digest in sorted(files.items()):
        file = root / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif _sha256(file) != digest:
            problems.append(f"{rel}: sha256 mismatch (file changed or corrupted)")
    problems += [f"{rel}: not listed in {MANIFEST}" for rel in _files(root) if rel not in files and rel != MANIFEST]
    return problems


def build_demo_base(
    out_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    steps: int | None = None,
    force: bool = False,
    progress: bool | None = None,
    **options: Any,
) -> Path:
    """Build (or reuse) the pretrained demo base; returns its folder, loadable with :func:`load_backbone`.

    Args:
        out_dir: target folder; ``None`` = the cache, ``<cache>/demo-base/<preset>-<key>`` (:func:`demo_base_dir`).
        seed: build seed (weights, captions, tokenizer corpus, batch order).
        steps: pretraining steps; ``None`` = :class:`DemoBaseConfig`'s default.
        force: rebuild locally even if a verified base is there (never reuses the shipped one).
        progress: show progress bars (``None``: only on a terminal).
        **options: other :class:`DemoBaseConfig` fields (``preset``, ``batch_size``, ``lr``, ``num_scenes``, ...).

    Returns:
        The folder (absolute). An existing folder is reused only if :func:`verify_demo_base` finds it intact and
        built with the same config; otherwise it is rebuilt (a message on stderr says why). When the target is
        the cache and it holds no base, the base shipped with dymoe (:data:`PACKAGED`) is copied in instead of
        building, if it verifies against the same config (so the default demo never pretrains on first use).

    Raises:
        ConfigError: an unknown option or an invalid value.
    """
    known = {f.name for f in dataclasses.fields(DemoBaseConfig)} - {"seed", "steps"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"build_demo_base: unknown options {unknown}; known: {sorted(known)}")
    config = DemoBaseConfig(seed=seed, **({"steps": steps} if steps is not None else {}), **options)
    out = (Path(out_dir) if out_dir is not None else demo_base_dir(config)).expanduser().resolve()
    if out.exists() and not force:
        problems = verify_demo_base(out, config)
        if not problems:
            return out
        print(f"demo base at {out} failed verification ({problems[0]}{' ...' if len(problems) > 1 else ''}); "
              "rebuilding", file=sys.stderr)
    if out.exists() and not out.is_dir():
        raise DymoeError(f"{out} exists and is not a folder")
    if out_dir is None and not force and not verify_demo_base(PACKAGED, config):
        return _install_packaged(out)
    if progress is None:
        progress = sys.stderr.isatty()
    return _build(out, config, progress)


def _install_packaged(out: Path) -> Path:
    """Copy the shipped base (:data:`PACKAGED`) to ``out`` and check the copy."""
    export_demo_base(PACKAGED, out)
    problems = verify_demo_base(out)
    if problems:  # a disk error while copying
        raise DymoeError(f"copying the shipped demo base to {out} failed: {problems[0]}")
    print(f"demo base: using the one shipped with dymoe (copied to {out}); "
          "`dymoe prepare-demo --force` rebuilds it locally", file=sys.stderr)
    return out


def export_demo_base(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a verified base folder ``source`` to ``dest`` (e.g. :data:`PACKAGED` when refreshing the shipped
    base); ``dest`` is replaced. Raises :class:`DymoeError` if ``source`` does not verify."""
    problems = verify_demo_base(source)
    if problems:
        raise DymoeError(f"{source} is not an intact demo base: {problems[0]}")
    dest = Path(dest).expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        shutil.copytree(source, tmp / "base")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / "base", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _build(out: Path, config: DemoBaseConfig, progress: bool) -> Path:
    import transformers

    from dymoe.models.tiny import PRESETS, make_tiny_llava

    if config.preset not in PRESETS:
        raise ConfigError(f"demo base preset {config.preset!r} unknown; expected one of {sorted(PRESETS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        captions = caption_samples(config.num_scenes + config.held_out, config.seed)
        samples = [TrainSample(f"caption_{i:06d}", c.image, [(c.prompt, c.caption)])  # type: ignore[arg-type]
                   for i, c in enumerate(captions)]
        model_dir = tmp / "base"
        make_tiny_llava(model_dir, preset=config.preset, seed=config.seed,
                        corpus=tokenizer_corpus(config, captions[: config.num_scenes]))
        summary = _pretrain(model_dir, config, samples[: config.num_scenes], samples[config.num_scenes:], progress)
        manifest = {
            "kind": "dymoe demo base",
            "key": config.key,
            "config": config.to_dict(),
            "training": summary,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {rel: _sha256(model_dir / rel) for rel in _files(model_dir)},
        }
        (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        os.chmod(model_dir, 0o755)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(model_dir, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(model_dir, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
