"""Batched greedy generation for evaluation, optionally sharded across the processes of an ``accelerate`` run.

:func:`generate_predictions` turns :class:`~dymoe.data.coin.TestSample` questions into ``merge.jsonl`` rows
``{"question_id", "prompt", "text"}`` (the format CoIN's eval scripts write, coin-protocol.md §3.3):

* prompts are built by :func:`dymoe.data.collate.build_generation_batch` (the backbone's chat template, left
  padding, pad-to-square images), so every generated token directly follows its own prompt;
* decoding is greedy with the KV cache (``do_sample=False, use_cache=True``), which makes a batched run equal to a
  one-by-one run (up to float round-off of the padded attention);
* only the new tokens are decoded, cut at the first EOS, special tokens dropped, then ``.strip()``-ed; anything
  else (a trailing period, a second line) is the scorers' business;
* samples are generated longest first (less padding per batch, and an out-of-memory shows up on the first batch)
  and returned in the order they were given;
* ``batch_hook(batch)`` is called before each ``generate`` with the batch on the device, which carries
  ``sample_index`` [B] (each row's index in ``samples``) and ``image_sample`` [N_img] (the row of each image), taken
  out before ``generate``; a hook may return ``{field: [B] values}`` that are written into those samples' rows
  (e.g. ``routed_task``, a task locator's prediction);
* with an ``accelerate.Accelerator`` of ``N`` processes, process ``p`` generates samples ``p, p + N, ...``, the
  shards are gathered with ``gather_object`` and every process gets the full list back in the original order.

:func:`evaluate_task` = :func:`generate_predictions` + the task's scorer from :data:`dymoe.eval.scorers.SCORERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from dymoe.data.coin import TestSample
from dymoe.data.collate import build_generation_batch, split_meta
from dymoe.data.tasks import TaskSpec
from dymoe.errors import ConfigError
from dymoe.eval.scorers import SCORERS, ScoreResult
from dymoe.models.families import tokenizer_of

__all__ = ["evaluate_task", "generate_predictions", "shard_indices"]


def shard_indices(n: int, num_processes: int, process_index: int) -> list[int]:
    """Indices of ``n`` samples that process ``process_index`` of ``num_processes`` generates (strided).

    Strided shards differ in size by at most one sample, and their union is ``range(n)`` with no repeats.
    """
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ConfigError(f"process_index {process_index} is not in [0, {num_processes})")
    return list(range(process_index, n, num_processes))


def _prompt_lengths(processor: Any, samples: Sequence[TestSample]) -> list[int]:
    """Approximate prompt lengths in tokens (question tokens + image tokens), used only to order the batches."""
    from dymoe.models.llava import num_image_tokens

    tokenizer = tokenizer_of(processor)
    n_img = num_image_tokens(processor) if any(s.image is not None for s in samples) else 0
    texts = [s.prompt for s in samples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [len(t) + (n_img if s.image is not None else 0) for t, s in zip(ids, samples)]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _decode_new(tokenizer: Any, new_tokens: torch.Tensor, eos_ids: set[int]) -> str:
    """Decode the generated part of one row: cut at the first EOS, drop special tokens (padding), strip."""
    ids = new_tokens.tolist()  # [max_new]
    for k, t in enumerate(ids):
        if t in eos_ids:
            ids = ids[:k]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _gather(accelerator: Any, obj: list) -> list:
    """``gather_object`` of the accelerator (a stub may provide one), else ``accelerate.utils.gather_object``."""
    gather = getattr(accelerator, "gather_object", None)
    if gather is None:
        from accelerate.utils import gather_object as gather
    return list(gather(obj))


@torch.no_grad()
def _generate_local(
    model: Any,
    processor: Any,
    samples: Sequence[TestSample],
    *,
    batch_size: int,
    max_new_tokens: int,
    max_length: int,
    device: torch.device,
    show_progress: bool,
    desc: str,
    batch_hook: Callable[[dict], dict | None] | None = None,
    indices: Sequence[int] | None = None,
    min_new_tokens: int | None = None,
) -> tuple[list[str], list[dict]]:
    """Greedy-generate the texts of ``samples`` on this process, longest prompt first; returned in input order
    with each sample's extra fields from ``batch_hook`` (``indices``: the samples' global indices)."""
    tokenizer = tokenizer_of(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    lengths = _prompt_lengths(processor, samples)
    order = sorted(range(len(samples)), key=lambda i: -lengths[i])  # stable: ties keep the input order
    dtype = next(model.parameters()).dtype
    texts: list[str | None] = [None] * len(samples)
    extras: list[dict] = [{} for _ in samples]
    glob = list(range(len(samples))) if indices is None else list(indices)
    bar = tqdm(total=len(samples), desc=desc, unit="q", disable=not show_progress)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        batch = build_generation_batch(processor, [samples[i] for i in idx], max_length=max_length,
                                       indices=[glob[i] for i in idx] if batch_hook is not None else None)
        # image tensors in the model's dtype (pixel_values [N_img, 3, H, W] for LLaVA); ids and masks stay integer
        batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
        if batch_hook is not None:
            # e.g. a task router setting the per-sample group mask for this batch
            fields = batch_hook(batch)
            for key, values in (fields or {}).items():
                values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
                if len(values) != len(idx):
                    raise ValueError(f"batch_hook returned {len(values)} values of {key!r} for {len(idx)} samples")
                for row, i in enumerate(idx):
                    extras[i][key] = values[row]
        batch, _ = split_meta(batch)
        length = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
        out = model.generate(
            **batch,
            **length,
            do_sample=False,
            use_cache=True,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            temperature=None,  # greedy: silence sampling defaults a generation_config may carry
            top_p=None,
            top_k=None,
        )  # [B, T + new] (left padding: the prompt part is exactly T = input_ids.shape[1] wide)
        new = out[:, batch["input_ids"].shape[1]:]  # [B, new]
        for row, i in enumerate(idx):
            texts[i] = _decode_new(tokenizer, new[row], eos_ids)
        bar.update(len(idx))
    bar.close()
    return texts, extras  # type: ignore[return-value]


def generate_predictions(
    model: Any,
    processor: Any,
    samples: Sequence[TestSample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    accelerator: Any = None,
    desc: str = "eval",
    max_length: int = 2048,
    batch_hook: Callable[[dict], dict | None] | None = None,
    min_new_tokens: int | None = None,
) -> list[dict]:
    """Greedy answers to test questions, as ``merge.jsonl`` rows in the order of ``samples``.

    Args:
        model: a generation-capable HF vision-language model (e.g. ``LlavaForConditionalGeneration``) or causal
            LM, possibly wrapped by ``accelerator.prepare`` (it is unwrapped for ``generate``).
        processor: its HF processor (chat template, tokenizer, image processor), or a causal LM's tokenizer.
        samples: the questions (``question_id``, ``image`` path or ``None``, ``prompt``).
        batch_size: questions per ``generate`` call (per process).
        max_new_tokens: generation budget per answer (CoIN answers are short; grounding boxes need ~30 tokens).
        accelerator: an ``accelerate.Accelerator`` (or anything with ``num_processes``, ``process_index``,
            ``is_main_process`` and optionally ``gather_object``/``device``/``unwrap_model``); ``None`` = one
            process on the model's device.
        desc: the progress-bar label (shown on the main process only).
        max_length: prompt token budget (see :func:`~dymoe.data.collate.build_generation_batch`).
        batch_hook: called with each generation batch (on the device, with ``sample_index`` = the rows' indices in
            ``samples``) before ``generate``; methods use it to set per-sample routing (task routers). It may
            return ``{field: [B] values}``, added to those samples' rows.
        min_new_tokens: passed to ``generate`` (an evaluation set's ``min_new_tokens``); None = no minimum.

    Returns:
        ``[{"question_id", "prompt", "text", ...}]``, one per sample, same order; identical on every process.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if min_new_tokens is not None and not 0 <= min_new_tokens <= max_new_tokens:
        raise ConfigError(f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}")
    samples = list(samples)
    if accelerator is not None:
        num_processes = int(accelerator.num_processes)
        process_index = int(accelerator.process_index)
        is_main = bool(accelerator.is_main_process)
        unwrap = getattr(accelerator, "unwrap_model", None)
        gen_model = unwrap(model) if unwrap is not None else model
    else:
        num_processes, process_index, is_main, gen_model = 1, 0, True, model
    device = getattr(accelerator, "device", None) or next(gen_model.parameters()).device
    mine = shard_indices(len(samples), num_processes, process_index)
    was_training = gen_model.training
    gen_model.eval()
    try:
        texts, extras = _generate_local(
            gen_model,
            processor,
            [samples[i] for i in mine],
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            max_length=max_length,
            device=torch.device(device),
            show_progress=is_main,
            desc=desc,
            batch_hook=batch_hook,
            indices=mine,
            min_new_tokens=min_new_tokens,
        )
    finally:
        gen_model.train(was_training)
    pairs = list(zip(mine, zip(texts, extras)))  # (global index, (text, extra fields))
    if num_processes > 1:
        pairs = _gather(accelerator, pairs)
    by_index = dict(pairs)
    if sorted(by_index) != list(range(len(samples))):
        raise RuntimeError(f"gathered {len(by_index)} of {len(samples)} predictions; the shards do not add up")
    return [
        {"question_id": s.question_id, "prompt": s.prompt, "text": by_index[i][0], **by_index[i][1]}
        for i, s in enumerate(samples)
    ]


def evaluate_task(
    model: Any,
    processor: Any,
    task_spec: TaskSpec,
    samples: Sequence[TestSample],
    *,
    scorer_name: str | None = None,
    annotations: dict[str, Any] | None = None,
    **gen_kwargs: Any,
) -> tuple[ScoreResult, list[dict]]:
    """Generate answers for one task's test samples and score them.

    Args:
        task_spec: the task (its ``scorer`` is used when ``scorer_name`` is ``None``; ``name`` labels the bar).
        samples: its test questions (``dymoe.data.formats.load_test``), whose ``reference`` rows carry the merged
            side-file entries the scorers fall back to.
        scorer_name: a key of :data:`~dymoe.eval.scorers.SCORERS` (e.g. ``"sqa"`` or ``"sqa-strict"``).
        annotations: *loaded* side files for the scorer (``dymoe.eval.scorers.load_annotations``); ``None`` uses
            the entries merged into the references.
        **gen_kwargs: forwarded to :func:`generate_predictions` (``batch_size``, ``max_new_tokens``,
            ``accelerator``, ``max_length``, ``desc``).

    Returns:
        ``(ScoreResult, predictions)``; predictions as returned by :func:`generate_predictions`.
    """
    scorer = SCORERS.get(scorer_name if scorer_name is not None else task_spec.scorer)
    gen_kwargs.setdefault("desc", f"eval {task_spec.name}")
    predictions = generate_predictions(model, processor, samples, **gen_kwargs)
    references = [s.reference for s in samples]
    return scorer(predictions, references, annotations), predictions
