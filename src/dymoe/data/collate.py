"""Prompting and batching through the backbone's own processor and chat template, for every model family.

Training (:class:`VLMCollator`): a conversation is rendered with ``processor.apply_chat_template`` turn by turn,
so the text splits into alternating *prompt* and *answer* segments (each render must be a prefix of the next).
Segment 0 goes through the processor with the image (which expands the image placeholder into the image tokens
and makes the image tensors); later segments through the tokenizer. Labels are ``-100`` on prompt segments and on
padding, and the token ids on answer segments. Every answer ends with EOS: when the template does not emit it (the
llava-hf template ends answers with a space), the answer's trailing whitespace is dropped and EOS appended, which
gives LLaVA's own ``vicuna_v1`` training text ``ASSISTANT: answer</s>USER: ...``.

Generation (:func:`build_generation_batch`): one user turn plus the generation prompt, left-padded.

Every tensor the processor returns reaches the model (nothing is dropped):

* per-token tensors (:data:`dymoe.models.families.TOKEN_KEYS`: ``attention_mask``, ``token_type_ids``,
  ``mm_token_type_ids``, ``cross_attention_mask``) are extended over the later segments and padded along the
  sequence with their padding value (right padding for training, left for generation);
* every other tensor is per image (``pixel_values``, ``image_grid_thw``, ``image_sizes``,
  ``pixel_attention_mask``, ``aspect_ratio_ids``...): the samples' tensors are joined along dim 0 in sample order,
  their other dims zero-padded to the largest (as the processors pad a batch themselves).

**Sample indices.** Given ``indices`` (one per sample: its position in the list the caller draws from), a batch
also carries ``sample_index`` [B] (the index of each row's sample, after the samples the collator dropped) and
``image_sample`` [N_img] (the batch row each image belongs to; with Mllama's empty slots every row has one). They
are metadata, not model inputs: :func:`split_meta` takes them out before the forward (:data:`META_KEYS`). Without
``indices`` the batch is exactly what it was before (no extra keys).

Family rules (:mod:`dymoe.models.families`): PaliGemma's prefix/suffix format and ``token_type_ids``, Mllama's
empty image slots for text-only rows, causal LMs (a tokenizer, no images). The batch keys are ``input_ids``,
``attention_mask``, ``labels`` (training), then the other per-token keys, then the image keys.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dymoe.data.coin import TestSample, TrainSample
from dymoe.data.images import background_from_mean, expand2square, load_image
from dymoe.errors import ConfigError, DataError
from dymoe.models.families import (
    TOKEN_KEYS,
    BatchRules,
    batch_rules,
    image_block_token_ids,
    is_text_only,
    tokenizer_of,
)

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
#: batch keys that describe the batch instead of feeding the model (see the module docstring)
META_KEYS = ("sample_index", "image_sample")


def split_meta(batch: dict) -> tuple[dict, dict]:
    """``(model inputs, metadata)`` of a batch: the :data:`META_KEYS` entries go to the second dict."""
    if not any(k in batch for k in META_KEYS):
        return batch, {}
    return ({k: v for k, v in batch.items() if k not in META_KEYS},
            {k: v for k, v in batch.items() if k in META_KEYS})


def _messages(turns: Sequence[tuple[str, str | None]], has_image: bool, plain: bool = False) -> list[dict]:
    """HF chat messages; ``plain``: string contents (text-only chat templates), else content lists."""
    msgs: list[dict] = []
    for k, (user, answer) in enumerate(turns):
        if plain:
            msgs.append({"role": "user", "content": user})
            if answer is not None:
                msgs.append({"role": "assistant", "content": answer})
            continue
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
    ``"USER: <image>\\n{q} ASSISTANT:"``. A causal LM's tokenizer gets plain-string message contents.
    """
    return _render(processor, _messages(turns, has_image, plain=is_text_only(processor)), add_generation_prompt)


def conversation_segments(processor: Any, turns: Sequence[tuple[str, str]], has_image: bool) -> list[tuple[str, bool]]:
    """Split a rendered conversation into ``[(text, is_answer), ...]`` (prompt, answer, prompt, answer, ...).

    For PaliGemma the segments are its own format (the first prompt is the bare question: its processor adds the
    image tokens, ``<bos>`` and ``\\n``). Raises :class:`ConfigError` when the chat template is not prefix-stable
    (a turn's render does not start with the previous render), which the label masking relies on.
    """
    if batch_rules(processor).prompt_format == "paligemma":
        eos = tokenizer_of(processor).eos_token
        segments = []
        for k, (user, answer) in enumerate(turns):
            segments += [(user if k == 0 else user + "\n", False), (answer + eos, True)]
        return segments
    msgs = _messages(turns, has_image, plain=is_text_only(processor))
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


def generation_prompt(processor: Any, question: str, has_image: bool) -> str:
    """The text of a one-turn generation prompt (what :func:`build_generation_batch` feeds the processor)."""
    if batch_rules(processor).prompt_format == "paligemma":
        return question
    return build_prompt(processor, [(question, None)], add_generation_prompt=True, has_image=has_image)


@dataclass
class Encoded:
    """One tokenised sample before padding.

    Attributes:
        ids: token ids [T]; labels: [T] (training) or None (generation).
        tokens: per-token tensors by key, each [T, ...] (``attention_mask`` always present).
        images: per-image tensors by key, each [n, ...] as the processor returned them (empty without an image).
        index: the sample's index in the caller's list (``sample_index`` of the batch), or None.
    """

    ids: list[int]
    labels: list[int] | None = None
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    index: int | None = None

    def select(self, index: list[int]) -> None:
        """Keep the positions ``index`` (in order) of the ids, labels and every per-token tensor."""
        self.ids = [self.ids[i] for i in index]
        if self.labels is not None:
            self.labels = [self.labels[i] for i in index]
        pos = torch.tensor(index, dtype=torch.long)
        self.tokens = {k: v.index_select(0, pos) for k, v in self.tokens.items()}


class PromptEncoder:
    """Runs the first segment of a prompt through the backbone's processor (or tokenizer) with its image.

    Args:
        processor: an HF processor with a chat template, or a causal LM's tokenizer.
        pad_to_square: pad images to a square with the processor's mean colour first (LLaVA ``pad`` mode).
    """

    def __init__(self, processor: Any, *, pad_to_square: bool = True):
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.rules: BatchRules = batch_rules(processor)
        self.pad_to_square = pad_to_square
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.eos_id = tok.eos_token_id
        self.image_ids = image_block_token_ids(processor)

    def image(self, path, where: str):
        if self.rules.text_only:
            raise DataError(f"{where} has an image, but the backbone is a text-only causal LM "
                            f"({type(self.processor).__name__}); see backbone.image_samples")
        img = load_image(path, where=where)
        if self.pad_to_square:
            img = expand2square(img, background_from_mean(self.processor.image_processor.image_mean))
        return img

    def image_end(self, ids: list[int]) -> int:
        """Position just after the last token of the image block (0 without an image)."""
        return max((i + 1 for i, t in enumerate(ids) if t in self.image_ids), default=0)

    def first_segment(self, text: str, image) -> Encoded:
        """Encode the first segment (prompt with its image, if any)."""
        tok = self.tokenizer
        # a template that writes BOS itself must not get a second one from the tokenizer
        special = not (tok.bos_token and text.startswith(tok.bos_token))
        if self.rules.text_only:
            enc = tok([text], add_special_tokens=special, return_tensors="pt")
        elif self.rules.prompt_format == "paligemma" and image is None:
            # PaliGemma's processor refuses text without an image; its prefix is then "<bos>{text}\n"
            ids = [tok.bos_token_id] + tok(text + "\n", add_special_tokens=False)["input_ids"]
            return Encoded(ids, tokens={"attention_mask": torch.ones(len(ids), dtype=torch.long),
                                        "token_type_ids": torch.zeros(len(ids), dtype=torch.long)})
        elif self.rules.prompt_format == "paligemma":
            enc = self.processor(text=[self.processor.image_token + text], images=[image], return_tensors="pt")
            enc.pop("labels", None)
        else:
            enc = self.processor(text=[text], images=[image] if image is not None else None,
                                 add_special_tokens=special, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        out = Encoded(ids)
        for key, value in enc.items():
            if key == "input_ids" or not isinstance(value, torch.Tensor):
                continue
            if key in TOKEN_KEYS:
                out.tokens[key] = value[0]  # [T, ...]
            elif image is not None:
                out.images[key] = value  # [n, ...]
        out.tokens.setdefault("attention_mask", torch.ones(len(ids), dtype=torch.long))
        return out

    def extend(self, enc: Encoded, ids: list[int], *, answer_seen: bool) -> None:
        """Append a later segment's token ids, extending every per-token tensor by its rule."""
        n = len(ids)
        enc.ids += ids
        for key, value in enc.tokens.items():
            fill = TOKEN_KEYS[key][1]
            if key == "token_type_ids" and self.rules.answer_token_type is not None and answer_seen:
                fill = self.rules.answer_token_type
            if fill == "last":
                more = value[-1:].expand(n, *value.shape[1:])
            else:
                more = torch.full((n, *value.shape[1:]), int(fill), dtype=value.dtype)
            enc.tokens[key] = torch.cat([value, more], dim=0)


def pad_and_join(encoded: list[Encoded], *, pad_id: int, side: str, rules: BatchRules) -> dict[str, torch.Tensor]:
    """Pad a list of encoded samples into a batch (``side``: ``"right"`` for training, ``"left"`` for generation).

    Returns ``input_ids`` [B, T], ``attention_mask`` [B, T], ``labels`` [B, T] (when the samples have labels), the
    other per-token tensors [B, T, ...] and the per-image tensors [N, ...] joined in sample order; when the samples
    carry indices, ``sample_index`` [B] and ``image_sample`` [N_img] (see the module docstring).
    """
    width = max(len(e.ids) for e in encoded)

    def place(row: torch.Tensor, b: int, values: torch.Tensor | list[int]) -> None:
        n = len(values)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        row[b, sl] = torch.as_tensor(values, dtype=row.dtype)

    batch: dict[str, torch.Tensor] = {}
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # [B, T]
    for b, e in enumerate(encoded):
        place(input_ids, b, e.ids)
    batch["input_ids"] = input_ids
    token_keys = [k for k in TOKEN_KEYS if any(k in e.tokens for e in encoded)]
    for key in token_keys:
        shaped = [e.tokens[key] for e in encoded if key in e.tokens]
        trailing = [max(t.shape[d] for t in shaped) for d in range(1, shaped[0].dim())]
        out = torch.full((len(encoded), width, *trailing), TOKEN_KEYS[key][0], dtype=shaped[0].dtype)  # [B, T, ...]
        for b, e in enumerate(encoded):
            if key in e.tokens:
                value = e.tokens[key]
                n = value.shape[0]
                sl = slice(0, n) if side == "right" else slice(width - n, width)
                out[(b, sl, *(slice(0, s) for s in value.shape[1:]))] = value
        batch[key] = out
        if key == "attention_mask" and encoded[0].labels is not None:
            labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
            for b, e in enumerate(encoded):
                place(labels, b, e.labels)
            batch["labels"] = labels
    batch.update(_join_images(encoded, rules))
    if any(e.index is not None for e in encoded):
        if any(e.index is None for e in encoded):
            raise ValueError("pad_and_join: either every sample carries its index or none does")
        batch["sample_index"] = torch.tensor([e.index for e in encoded], dtype=torch.long)  # [B]
        slots = rules.empty_image_slot is not None and any(e.images for e in encoded)
        owners = [b for b, e in enumerate(encoded) if e.images or slots]
        batch["image_sample"] = torch.tensor(owners, dtype=torch.long)  # [N_img]
    return batch


def _join_images(encoded: list[Encoded], rules: BatchRules) -> dict[str, torch.Tensor]:
    with_images = [e.images for e in encoded if e.images]
    if not with_images:
        return {}
    if rules.empty_image_slot is not None:  # one slot per row (Mllama): text-only rows get an empty one
        template = with_images[0]
        with_images = [e.images if e.images else rules.empty_image_slot(template) for e in encoded]
    joined = {}
    for key in with_images[0]:
        parts = [imgs[key] for imgs in with_images]
        shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        padded = []
        for p in parts:
            if list(p.shape[1:]) != shape:  # e.g. LLaVA-NeXT patches or Idefics3 images per row: zero-padded
                q = p.new_zeros((p.shape[0], *shape))
                q[(slice(None), *(slice(0, s) for s in p.shape[1:]))] = p
                p = q
            padded.append(p)
        joined[key] = torch.cat(padded, dim=0)  # [N, ...]
    return joined


class VLMCollator:
    """Training collator: tokenised conversations with answer-only labels, right padding, square-padded images.

    Args:
        processor: the backbone's HF processor (``AutoProcessor.from_pretrained``) with a chat template, or a
            causal LM's tokenizer with one.
        max_length: maximum sequence length; longer samples lose text from the end (the image tokens are
            never cut); a sample whose image tokens alone exceed it, or left with no answer token, is dropped.
        pad_to_square: pad images to a square with the processor's mean colour first (LLaVA ``pad`` mode).

    Attributes:
        num_truncated: samples shortened so far; num_dropped: samples dropped so far (both cumulative).

    ``__call__(samples)`` returns ``input_ids`` [B, T], ``attention_mask`` [B, T], ``labels`` [B, T] (−100 except
    the answer tokens, each answer's EOS included), the family's other per-token tensors [B, T, ...] and, if any
    sample has an image, its image tensors (LLaVA: ``pixel_values`` [N_img, 3, H, W] in the order of the samples
    with an image); see the module docstring.
    """

    def __init__(self, processor: Any, *, max_length: int, pad_to_square: bool = True):
        if max_length < 1:
            raise ConfigError(f"max_length must be positive, got {max_length}")
        self.processor = processor
        self.encoder = PromptEncoder(processor, pad_to_square=pad_to_square)
        self.tokenizer = self.encoder.tokenizer
        self.max_length = max_length
        self.pad_to_square = pad_to_square
        self.num_truncated = 0
        self.num_dropped = 0
        self.pad_id = self.encoder.pad_id
        self.eos_id = self.encoder.eos_id

    def _pixels(self, path, where: str):
        """The image of a sample, decoded and padded to square (a subclass may feed in-memory images)."""
        return self.encoder.image(path, where)

    def encode(self, sample: TrainSample) -> Encoded | None:
        """One sample's :class:`Encoded` (ids, labels, per-token and image tensors), or ``None`` if dropped."""
        has_image = sample.image is not None
        segments = conversation_segments(self.processor, sample.turns, has_image)
        enc: Encoded | None = None
        answer_seen = False
        eos = self.tokenizer.eos_token
        for k, (text, is_answer) in enumerate(segments):
            if k == 0:
                image = self._pixels(sample.image, f"sample {sample.id!r}") if has_image else None
                enc = self.encoder.first_segment(text, image)
                enc.labels = [IGNORE_INDEX] * len(enc.ids)
                continue
            if is_answer and eos and not text.rstrip().endswith(eos):
                seg = self.tokenizer(text.rstrip(), add_special_tokens=False)["input_ids"] + [self.eos_id]
            else:
                seg = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            answer_seen = answer_seen or is_answer
            self.encoder.extend(enc, seg, answer_seen=answer_seen)
            enc.labels += seg if is_answer else [IGNORE_INDEX] * len(seg)
        if len(enc.ids) > self.max_length:
            image_end = self.encoder.image_end(enc.ids)
            if image_end > self.max_length:
                self._count("num_dropped", sample, f"its {image_end} tokens up to the image end exceed max_length")
                return None
            enc.select(list(range(self.max_length)))
            self._count("num_truncated", sample, f"truncated to max_length={self.max_length}")
        if all(label == IGNORE_INDEX for label in enc.labels):
            self._count("num_dropped", sample, "no answer token left within max_length")
            return None
        return enc

    def _count(self, counter: str, sample: TrainSample, why: str) -> None:
        """Increment a counter; the first occurrence of each kind is logged so that it is never silent."""
        value = getattr(self, counter) + 1
        setattr(self, counter, value)
        if value == 1:
            log.warning("VLMCollator: sample %r %s (%s counts every such sample)", sample.id, why, counter)

    def __call__(self, samples: list[TrainSample], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Collate a batch (see the class docstring for the keys and shapes); ``indices`` (one per sample) adds
        ``sample_index`` / ``image_sample`` for the samples kept (see the module docstring)."""
        if indices is not None and len(indices) != len(samples):
            raise ValueError(f"{len(indices)} indices for {len(samples)} samples")
        encoded = []
        for k, s in enumerate(samples):
            e = self.encode(s)
            if e is not None:
                e.index = None if indices is None else int(indices[k])
                encoded.append(e)
        if not encoded:
            raise DataError(
                f"every sample of the batch was dropped: max_length={self.max_length} leaves no answer token "
                "(or is shorter than the image tokens)"
            )
        return pad_and_join(encoded, pad_id=self.pad_id, side="right", rules=self.encoder.rules)


def build_generation_batch(
    processor: Any,
    samples: list[TestSample],
    *,
    max_length: int,
    pad_to_square: bool = True,
    stats: dict[str, int] | None = None,
    indices: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """A left-padded generation batch: ``USER: <image>\\n{prompt} ASSISTANT:`` per sample (in the backbone's format).

    Returns ``input_ids`` [B, T], ``attention_mask`` [B, T], the family's other per-token tensors and, if any
    sample has an image, its image tensors (LLaVA: ``pixel_values`` [N_img, 3, H, W], samples with an image, in
    order). A prompt longer than ``max_length`` keeps everything up to the end of its image block and the last
    tokens of the text (so the question's end and ``ASSISTANT:`` stay); each such sample is counted in
    ``stats["num_truncated"]`` and logged. If the image tokens plus the generation prompt cannot fit,
    :class:`DataError` is raised (a prediction cannot be skipped silently). ``indices`` (one per sample) adds
    ``sample_index`` / ``image_sample`` (see the module docstring).
    """
    encoder = PromptEncoder(processor, pad_to_square=pad_to_square)
    encoded: list[Encoded] = []
    truncated = 0
    if indices is not None and len(indices) != len(samples):
        raise ValueError(f"{len(indices)} indices for {len(samples)} samples")
    for pos, s in enumerate(samples):
        has_image = s.image is not None
        text = generation_prompt(processor, s.prompt, has_image)
        image = encoder.image(s.image, f"question {s.question_id!r}") if has_image else None
        enc = encoder.first_segment(text, image)
        n = len(enc.ids)
        if n > max_length:
            keep = encoder.image_end(enc.ids) or 1
            tail = max_length - keep
            if tail < 1:
                raise DataError(
                    f"question {s.question_id!r}: max_length={max_length} cannot hold the image tokens and the "
                    "generation prompt"
                )
            enc.select(list(range(keep)) + list(range(n - tail, n)))
            truncated += 1
        enc.index = None if indices is None else int(indices[pos])
        encoded.append(enc)
    if truncated:
        log.warning("build_generation_batch: %d prompt(s) longer than max_length=%d were truncated", truncated,
                    max_length)
        if stats is not None:
            stats["num_truncated"] = stats.get("num_truncated", 0) + truncated
    return pad_and_join(encoded, pad_id=encoder.pad_id, side="left", rules=encoder.rules)


def text_only_samples(samples: list, *, task: str, policy: str, split: str) -> list:
    """The samples a text-only backbone can take: ``policy`` ``error`` refuses image samples, ``skip`` drops them.

    Raises:
        DataError: an image sample under ``error`` (naming the task and the option), or no sample left.
    """
    with_image = sum(1 for s in samples if s.image is not None)
    if not with_image:
        return samples
    if policy != "skip":
        raise DataError(
            f"task {task!r}: {with_image} of {len(samples)} {split} samples have an image, but the backbone is a "
            "text-only causal LM; set backbone.image_samples=skip to leave them out"
        )
    kept = [s for s in samples if s.image is None]
    if not kept:
        raise DataError(f"task {task!r}: every {split} sample has an image; a text-only backbone has nothing to "
                        f"{'train' if split == 'training' else 'evaluate'} on")
    log.warning("task %r: %d %s samples with an image skipped (text-only backbone)", task, with_image, split)
    return kept

