"""Prompting and batching through the backbone's own processor and chat template.

Training (:class:`VLMCollator`): a conversation is rendered with ``processor.apply_chat_template`` turn by turn,
so the text splits into alternating *prompt* and *answer* segments (each render must be a prefix of the next).
Segment 0 goes through the processor with the image (which expands ``<image>`` into the image tokens and makes
``pixel_values``); later segments through the tokenizer. Labels are ``-100`` on prompt segments and on padding,
and the token ids on answer segments. Every answer ends with EOS: when the template does not emit it (the
llava-hf template ends answers with a space), the answer's trailing whitespace is dropped and EOS appended, which
gives LLaVA's own ``vicuna_v1`` training text ``ASSISTANT: answer</s>USER: ...``.

Generation (:func:`build_generation_batch`): one user turn plus the generation prompt, left-padded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from dymoe.data.coin import TestSample, TrainSample
from dymoe.data.images import background_from_mean, expand2square, load_image
from dymoe.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _messages(turns: Sequence[tuple[str, str | None]], has_image: bool) -> list[dict]:
    msgs: list[dict] = []
    for k, (user, answer) in enumerate(turns):
        content: list[dict] = [{"type": "image"}] if (has_image and k == 0) else []
        content.append({"type": "text", "text": user})
        msgs.append({"role": "user", "content": content})
        if answer is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def _render(processor: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    if getattr(processor, "chat_template", None) is None:
        raise ConfigError(f"{type(processor).__name__} has no chat_template; the backbone folder must provide one")
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def build_prompt(
    processor: Any, turns: Sequence[tuple[str, str | None]], *, add_generation_prompt: bool, has_image: bool
) -> str:
    """Render (user, assistant) turns with ``processor.apply_chat_template``.

    The image (if any) belongs to the first user turn; an assistant text of ``None`` leaves that answer out (for
    generation, the last turn is ``(question, None)`` with ``add_generation_prompt=True``). For LLaVA-1.5:
    ``"USER: <image>\\n{q} ASSISTANT:"``.
    """
    return _render(processor, _messages(turns, has_image), add_generation_prompt)


def conversation_segments(processor: Any, turns: Sequence[tuple[str, str]], has_image: bool) -> list[tuple[str, bool]]:
    """Split a rendered conversation into ``[(text, is_answer), ...]`` (prompt, answer, prompt, answer, ...).

    Raises :class:`ConfigError` when the chat template is not prefix-stable (a turn's render does not start with
    the previous render), which the label masking relies on.
    """
    msgs = _messages(turns, has_image)
    segments: list[tuple[str, bool]] = []
    done = ""
    for k in range(len(turns)):
        prompt = _render(processor, msgs[: 2 * k + 1], add_generation_prompt=True)
        full = _render(processor, msgs[: 2 * k + 2], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ConfigError(
                "the chat template is not prefix-stable (rendering turn by turn does not extend the text), "
                "so answer tokens cannot be located for the labels"
            )
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return segments


class VLMCollator:
    """Training collator: tokenised conversations with answer-only labels, right padding, square-padded images.

    Args:
        processor: the backbone's HF processor (``AutoProcessor.from_pretrained``) with a chat template.
        max_length: maximum sequence length; longer samples lose text from the end (the image tokens are
            never cut); a sample whose image tokens alone exceed it, or left with no answer token, is dropped.
        pad_to_square: pad images to a square with the processor's mean colour first (LLaVA ``pad`` mode).

    Attributes:
        num_truncated: samples shortened so far; num_dropped: samples dropped so far (both cumulative).

    ``__call__(samples)`` returns ``input_ids`` [B, T], ``attention_mask`` [B, T], ``labels`` [B, T] (−100 except
    the answer tokens, each answer's EOS included) and, if any sample has an image, ``pixel_values``
    [N_img, 3, H, W] in the order of the samples with an image.
    """

    def __init__(self, processor: Any, *, max_length: int, pad_to_square: bool = True):
        if max_length < 1:
            raise ConfigError(f"max_length must be positive, got {max_length}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.pad_to_square = pad_to_square
        self.num_truncated = 0
        self.num_dropped = 0
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.eos_id = self.tokenizer.eos_token_id
        self.image_token_id = _image_token_id(processor)

    def _pixels(self, path, where: str):
        img = load_image(path, where=where)
        if self.pad_to_square:
            img = expand2square(img, background_from_mean(self.processor.image_processor.image_mean))
        return img

    def encode(self, sample: TrainSample) -> tuple[list[int], list[int], torch.Tensor | None] | None:
        """``(input_ids, labels, pixel_values [1, 3, H, W] | None)`` of one sample, or ``None`` if dropped."""
        has_image = sample.image is not None
        segments = conversation_segments(self.processor, sample.turns, has_image)
        ids: list[int] = []
        labels: list[int] = []
        pixel_values = None
        for k, (text, is_answer) in enumerate(segments):
            if k == 0:
                images = [self._pixels(sample.image, f"sample {sample.id!r}")] if has_image else None
                enc = self.processor(text=[text], images=images, return_tensors="pt")
                seg = enc["input_ids"][0].tolist()
                pixel_values = enc.get("pixel_values") if has_image else None
            else:
                if is_answer and self.tokenizer.eos_token and not text.rstrip().endswith(self.tokenizer.eos_token):
                    text = text.rstrip()
                    seg = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]
                else:
                    seg = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += seg
            labels += seg if is_answer else [IGNORE_INDEX] * len(seg)
        if len(ids) > self.max_length:
            image_end = max((i + 1 for i, t in enumerate(ids) if t == self.image_token_id), default=0)
            if image_end > self.max_length:
                self._count("num_dropped", sample, f"its {image_end} tokens up to the image end exceed max_length")
                return None
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            self._count("num_truncated", sample, f"truncated to max_length={self.max_length}")
        if all(label == IGNORE_INDEX for label in labels):
            self._count("num_dropped", sample, "no answer token left within max_length")
            return None
        return ids, labels, pixel_values

    def _count(self, counter: str, sample: TrainSample, why: str) -> None:
        """Increment a counter; the first occurrence of each kind is logged so that it is never silent."""
        value = getattr(self, counter) + 1
        setattr(self, counter, value)
        if value == 1:
            log.warning("VLMCollator: sample %r %s (%s counts every such sample)", sample.id, why, counter)

    def __call__(self, samples: list[TrainSample]) -> dict[str, torch.Tensor]:
        """Collate a batch (see the class docstring for the keys and shapes)."""
        encoded = [e for e in (self.encode(s) for s in samples) if e is not None]
        if not encoded:
            raise DataError(
                f"every sample of the batch was dropped: max_length={self.max_length} leaves no answer token "
                "(or is shorter than the image tokens)"
            )
        width = max(len(ids) for ids, _, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)  # [B, T]
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)  # [B, T]
        for b, (ids, lab, _) in enumerate(encoded):  # right padding
            input_ids[b, : len(ids)] = torch.tensor(ids)
            labels[b, : len(lab)] = torch.tensor(lab)
            attention_mask[b, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixels = [pv for _, _, pv in encoded if pv is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels, dim=0)  # [N_img, 3, H, W]
        return batch


def _image_token_id(processor: Any) -> int | None:
    tid = getattr(processor, "image_token_id", None)
    if tid is None and getattr(processor, "image_token", None) is not None:
        tid = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return tid


def build_generation_batch(
    processor: Any,
    samples: list[TestSample],
    *,
    max_length: int,
    pad_to_square: bool = True,
    stats: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """A left-padded generation batch: ``USER: <image>\\n{prompt} ASSISTANT:`` per sample.

    Returns ``input_ids`` [B, T], ``attention_mask`` [B, T] and, if any sample has an image, ``pixel_values``
    [N_img, 3, H, W] (samples with an image, in order). A prompt longer than ``max_length`` keeps everything up to
    the end of its image tokens and the last tokens of the text (so the question's end and ``ASSISTANT:`` stay);
    each such sample is counted in ``stats["num_truncated"]`` and logged. If the image tokens plus the
    generation prompt cannot fit, :class:`DataError` is raised (a prediction cannot be skipped silently).
    """
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    image_token_id = _image_token_id(processor)
    rows: list[list[int]] = []
    pixels = []
    truncated = 0
    for s in samples:
        has_image = s.image is not None
        text = build_prompt(processor, [(s.prompt, None)], add_generation_prompt=True, has_image=has_image)
        images = None
        if has_image:
            img = load_image(s.image, where=f"question {s.question_id!r}")
            if pad_to_square:
                img = expand2square(img, background_from_mean(processor.image_processor.image_mean))
            images = [img]
        enc = processor(text=[text], images=images, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        if has_image:
            pixels.append(enc["pixel_values"])
        if len(ids) > max_length:
            keep = max((i + 1 for i, t in enumerate(ids) if t == image_token_id), default=1)
            tail = max_length - keep
            if tail < 1:
                raise DataError(
                    f"question {s.question_id!r}: max_length={max_length} cannot hold the image tokens and the "
                    "generation prompt"
                )
            ids = ids[:keep] + ids[-tail:]
            truncated += 1
        rows.append(ids)
    if truncated:
        log.warning("build_generation_batch: %d prompt(s) longer than max_length=%d were truncated", truncated,
                    max_length)
        if stats is not None:
            stats["num_truncated"] = stats.get("num_truncated", 0) + truncated
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    for b, ids in enumerate(rows):  # left padding: the generated tokens follow every prompt directly
        input_ids[b, width - len(ids):] = torch.tensor(ids)
        attention_mask[b, width - len(ids):] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pixels:
        batch["pixel_values"] = torch.cat(pixels, dim=0)  # [N_img, 3, H, W]
    return batch
