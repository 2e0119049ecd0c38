"""Offline tiny backbones: complete Hugging Face LLaVA / causal-LM folders with random weights.

:func:`make_tiny_llava` writes a folder that ``AutoProcessor.from_pretrained`` and
``LlavaForConditionalGeneration.from_pretrained`` load exactly as they load ``llava-hf/llava-1.5-7b-hf``:
``config.json`` + ``model.safetensors`` (random weights, deterministic given the seed), a byte-level BPE tokenizer
trained offline with ``tokenizers`` (any text encodes), a ``CLIPImageProcessor`` with CLIP's mean/std and a
``LlavaProcessor`` whose chat template renders the LLaVA-1.5 (vicuna_v1) conversation format::

    USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT:

Nothing is downloaded. The language model is Llama (SDPA attention, untied embeddings), the vision tower CLIP,
``vision_feature_layer=-2`` and ``vision_feature_select_strategy="default"`` like llava-1.5; the processor counts
CLIP's CLS token (``num_additional_image_tokens=1``) so that it emits exactly ``(image_size // patch_size) ** 2``
image tokens, as many as the model produces features.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dymoe.errors import ConfigError, DymoeError

__all__ = [
    "PRESETS",
    "TinyPreset",
    "LLAVA_CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "default_corpus",
    "make_tiny_causal_lm",
    "make_tiny_llava",
    "preset_config",
]

# CLIP's normalisation constants (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD), as in llava-1.5's preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Order fixes the ids: <unk>=0, <s>=1, </s>=2, <pad>=3, <image>=4.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")

# LLaVA-1.5 (vicuna_v1 separators, no system prompt unless a system message is given) in HF's content-list
# message format. Images of a turn come first, each followed by "\n"; a turn's text items are joined by "\n".
# Assistant text sits inside {% generation %} so ``return_assistant_tokens_mask=True`` marks the answer and its
# "</s>" (the tokens a model is trained on).
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ texts | join('\\n') + ' ' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'USER: ' + '<image>\\n' * n_images + texts | join('\\n') + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}{% generation %}{{ texts | join('\\n') + '</s>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('unknown role ' + message['role'] + ': expected system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyPreset:
    """Shapes of one tiny LLaVA (the vocabulary size comes from the trained tokenizer).

    ``image_size // patch_size`` squared is the number of image tokens per image.
    """

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_target: int
    max_positions: int = 1024

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image: ``(image_size // patch_size) ** 2`` (CLS dropped)."""
        return (self.image_size // self.patch_size) ** 2


# Parameter counts are with the built-in corpus (vocab = trained tokenizer size) and are checked by a test.
PRESETS: dict[str, TinyPreset] = {
    # 173k params (vocab 512): 16x16 image / 4x4 patches = 16 image tokens; vision 32 x 2; Llama 64 x 2.
    "test": TinyPreset(16, 4, 32, 2, 4, 64, 64, 2, 4, 128, vocab_target=512),
    # 1.21M params (vocab 1024): 64x64 / 8x8 = 64 image tokens (mini-CoIN's images at full resolution, same cost
    # as 32x32 / 4x4); vision 64 x 2; Llama 128 x 4 (laptop demo).
    "demo": TinyPreset(64, 8, 64, 2, 4, 256, 128, 4, 4, 352, vocab_target=1024),
    # 5.47M params (vocab 1024): 64x64 / 8x8 = 64 image tokens; vision 64 x 2; Llama 256 x 6.
    "small": TinyPreset(64, 8, 64, 2, 4, 256, 256, 6, 8, 688, vocab_target=1024),
}

# Text-only causal LMs for tests of plain LMs (same tokenizer recipe): 64-dim x 2 layers.
_CAUSAL_LM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=1024)


def _get_preset(preset: str) -> TinyPreset:
    if preset not in PRESETS:
        raise ConfigError(f"unknown tiny preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


def preset_config(preset: str, vocab_size: int, *, image_token_id: int = 4, pad_token_id: int = 3,
                  bos_token_id: int = 1, eos_token_id: int = 2):
    """Build the :class:`~transformers.LlavaConfig` of a preset without writing files.

    Args:
        preset: a key of :data:`PRESETS` (``"test"``, ``"demo"``, ``"small"``).
        vocab_size: size of the language model's embedding / ``lm_head`` (the tokenizer's ``len``).
        image_token_id, pad_token_id, bos_token_id, eos_token_id: special-token ids (defaults match
            :data:`SPECIAL_TOKENS`).

    Returns:
        A ``LlavaConfig`` with a Llama text config (SDPA, untied embeddings) and a CLIP vision config.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    p = _get_preset(preset)
    if vocab_size <= max(image_token_id, pad_token_id, bos_token_id, eos_token_id):
        raise ConfigError(f"vocab_size={vocab_size} must exceed every special-token id")
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=p.hidden, num_hidden_layers=p.layers, num_attention_heads=p.heads,
        num_key_value_heads=p.heads, intermediate_size=p.intermediate, max_position_embeddings=p.max_positions,
        rms_norm_eps=1e-5, pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        image_size=p.image_size, patch_size=p.patch_size, num_channels=3, hidden_size=p.vision_hidden,
        num_hidden_layers=p.vision_layers, num_attention_heads=p.vision_heads,
        intermediate_size=p.vision_intermediate, projection_dim=p.vision_hidden, hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        text_config=text, vision_config=vision, image_token_index=image_token_id,
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_seq_length=p.num_image_tokens, tie_word_embeddings=False, pad_token_id=pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return config


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

_SENTENCES = (
    "What is the object in the image? Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Please provide the bounding box coordinate of the region this sentence describes: the man on the left.",
    "Please provide a short description for this region.",
    "What is written in the image? Who wrote this book? What is the title of this book?",
    "What type of book is this? Is this a religious book? Is this book related to history?",
    "What color is the car? How many people are there in the picture? Is there a dog on the grass?",
    "Where is the cat sitting? What is the man holding in his hand? Which side of the table is the cup on?",
    "When was this picture taken? Why is the woman smiling? Can you read the sign on the street?",
    "Is the light red or green? Are these animals wild or domestic? Does the boy wear a hat?",
    "The question cannot be answered from the image. Unanswerable. Yes. No. Maybe. None of the above.",
    "Context: A student is doing an experiment with magnets in a science lab at school.",
    "Question: Which property do these three objects have in common? Options: A. hard B. soft C. sticky",
    "Which word would you find on a dictionary page? Which tense does the sentence use? Select the answer.",
    "Look at the picture and describe it in detail. Identify the animal, the plant and the tool shown here.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: The image shows a red apple, a yellow banana and a green pear on a white plate.",
    "A black and white photo of a train station with many people waiting on the platform.",
    "There are two zebras standing in a field of tall grass under a blue sky with white clouds.",
    "The text on the sign says \"STOP\". The number on the bus is 42. The price is $3.50 (three fifty).",
    "golden retriever, tabby cat, tiger shark, goldfish, jellyfish, coffee mug, school bus, laptop, pizza.",
    "kitchen, bedroom, living room, bathroom, street, beach, mountain, forest, river, city, airport.",
    "one two three four five six seven eight nine ten eleven twelve hundred thousand million first second.",
    "left right top bottom above below behind in front of next to near far inside outside between.",
    "red orange yellow green blue purple pink brown black white gray silver gold.",
    "Answer: A. Answer: B. Answer: C. Answer: D. Answer: E. The answer is A, B, C, D or E.",
    "man woman boy girl child people person player team dog cat horse bird cow sheep elephant bear giraffe.",
    "table chair bed sofa window door wall floor tree flower sky water road car truck bike plane boat train.",
    "is are was were has have had do does did can could will would should may might must be been being.",
    "the a an of to in on at by for with from and or but not this that these those it its they them their.",
    "Fiction, Literature, History, Science, Math, Travel, Cookbooks, Children's Books, Biographies & Memoirs.",
    "Grounding: [0.12, 0.34, 0.56, 0.78]. Region: [0.0, 0.25, 0.5, 1.0]. Size: 640 x 480 pixels.",
    "Symbols: + - * / = < > ( ) [ ] { } # % & @ ! ? ; : , . ' \" _ ~ ` ^ | \\",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789",
)


def default_corpus() -> Iterator[str]:
    """The built-in English training corpus of the tiny tokenizers (deterministic, ~1k lines).

    Covers CoIN-style instructions and answers (VQA, ScienceQA options A-E, grounding boxes with decimal numbers,
    OCR book titles, ImageNet class names), digits, punctuation and brackets.
    """
    for _ in range(4):
        yield from _SENTENCES
    for i, text in enumerate(_SENTENCES):
        # The chat format itself, so "USER", "ASSISTANT" and their separators become single tokens.
        answer = _SENTENCES[(i + 7) % len(_SENTENCES)].split(".")[0]
        yield f"USER: {text} ASSISTANT: {answer}. USER: Why? ASSISTANT: {chr(65 + i % 5)}"
    for i in range(300):
        # Decimal numbers and boxes in the "[x1, y1, x2, y2]" format of CoIN grounding answers.
        a, b, c, d = ((i * k * 37) % 100 / 100 for k in (1, 3, 7, 11))
        yield f"[{a:.2f}, {b:.2f}, {c:.2f}, {d:.2f}]"
        yield f"{i} {i * 7 % 1000} {i / 8:.3f} {i}% ({chr(65 + i % 5)}) {chr(65 + i % 5)}. option {i % 5 + 1}"


def build_tokenizer(corpus: Iterable[str] | None = None, *, vocab_size: int = 1024, model_max_length: int = 1024,
                    extra_tokens: Iterable[str] = (), extra_special_tokens: dict[str, str] | None = None,
                    add_bos: bool = True, names: dict[str, str] | None = None):
    """Train a byte-level BPE tokenizer offline and wrap it in ``PreTrainedTokenizerFast``.

    Args:
        corpus: training texts; ``None`` uses :func:`default_corpus`.
        vocab_size: target vocabulary size, special tokens included (fewer if the corpus runs out of merges).
        model_max_length: stored as the tokenizer's maximum length.
        extra_tokens: more special tokens (after :data:`SPECIAL_TOKENS`, in order), e.g. a family's image markers.
        extra_special_tokens: named special tokens (``{"image_token": "<image>"}`` by default) that become
            tokenizer attributes (``tokenizer.image_token``, ``tokenizer.image_token_id``).
        add_bos: prepend ``<s>`` when encoding (Llama-like); False for Qwen-like tokenizers.
        names: the strings of ``bos``/``eos``/``unk``/``pad`` when a family spells them differently (the token
            ids stay those of :data:`SPECIAL_TOKENS`); e.g. ``{"eos": "<|im_end|>"}``.

    Returns:
        A ``PreTrainedTokenizerFast`` with the 256 byte symbols (so any text encodes), ``<unk>``/``<s>``/``</s>``/
        ``<pad>`` and ``<image>`` (``tokenizer.image_token``), which prepends ``<s>`` like Llama's tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size={vocab_size} must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials)")
    names = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>", **(names or {})}
    specials = [names["unk"], names["bos"], names["eos"], names["pad"], *SPECIAL_TOKENS[4:]]
    specials += [t for t in extra_tokens if t not in specials]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    texts = default_corpus() if corpus is None else corpus
    tok.train_from_iterator((t for t in texts if isinstance(t, str) and t), trainer=trainer)
    bos = names["bos"]
    steps = [processors.ByteLevel(trim_offsets=False)]
    if add_bos:
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                   special_tokens=[(bos, tok.token_to_id(bos))]))
    tok.post_processor = processors.Sequence(steps)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=names["eos"], unk_token=names["unk"], pad_token=names["pad"],
        extra_special_tokens=extra_special_tokens if extra_special_tokens is not None else {"image_token": "<image>"},
        model_max_length=model_max_length, padding_side="left", clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# Folder writers
# ---------------------------------------------------------------------------------------------------------------


def _image_processor(image_size: int):
    """A ``CLIPImageProcessor`` (the PIL backend where transformers has one) resizing to ``image_size``."""
    try:  # transformers >= 5.2x: the torchvision-free backend has its own class
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # transformers 5.17: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as cls
    return cls(
        do_resize=True, size={"shortest_edge": image_size}, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )


def _write_atomically(out_dir: str | os.PathLike, overwrite: bool, build) -> Path:
    """Run ``build(tmp_dir)`` in a temp folder next to ``out_dir``, then move it into place."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise DymoeError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DymoeError(f"{out} is not empty; pass overwrite=True to replace its contents")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old: Path | None = None
    try:
        build(tmp)
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / out.name).exists() and not out.exists():
            os.replace(old / out.name, out)  # restore what was there
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def make_tiny_llava(out_dir: str | os.PathLike, *, preset: str = "test", seed: int = 0,
                    corpus: Iterable[str] | None = None, overwrite: bool = False) -> Path:
    """Write a complete, randomly initialised Hugging Face LLaVA folder (offline).

    Args:
        out_dir: target folder; must be missing or empty unless ``overwrite``.
        preset: a key of :data:`PRESETS`.
        seed: seeds the weight initialisation (same seed and corpus → byte-identical weights).
        corpus: texts to train the tokenizer on; ``None`` uses :func:`default_corpus`.
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        The folder (absolute), loadable with ``AutoProcessor`` / ``LlavaForConditionalGeneration.from_pretrained``.

    Raises:
        DymoeError: ``out_dir`` is not empty and ``overwrite`` is False.
        ConfigError: unknown ``preset``.
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    p = _get_preset(preset)
    corpus = list(corpus) if corpus is not None else None

    def build(tmp: Path) -> None:
        tokenizer = build_tokenizer(corpus, vocab_size=p.vocab_target, model_max_length=p.max_positions)
        tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        config = preset_config(preset, len(tokenizer), image_token_id=ids["<image>"], pad_token_id=ids["<pad>"],
                               bos_token_id=ids["<s>"], eos_token_id=ids["</s>"])
        model = _seeded(seed, lambda: LlavaForConditionalGeneration(config))
        model.generation_config.pad_token_id = ids["<pad>"]
        processor = LlavaProcessor(
            image_processor=_image_processor(p.image_size), tokenizer=tokenizer, patch_size=p.patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE, image_token="<image>",
        )
        model.save_pretrained(tmp)  # safetensors
        processor.save_pretrained(tmp)

    return _write_atomically(out_dir, overwrite, build)


def make_tiny_causal_lm(out_dir: str | os.PathLike, *, arch: str = "llama", seed: int = 0,
                        corpus: Iterable[str] | None = None, overwrite: bool = False) -> Path:
    """Write a tiny text-only causal LM folder (config, random weights, tokenizer with the LLaVA-1.5 template).

    Args:
        out_dir: target folder; must be missing or empty unless ``overwrite``.
        arch: ``"llama"`` or ``"qwen2"`` (64-dim x 2 layers, 4 heads, 2 KV heads, untied embeddings, SDPA).
        seed: seeds the weight initialisation.
        corpus: tokenizer training texts; ``None`` uses :func:`default_corpus`.
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        The folder (absolute), loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    archs = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if arch not in archs:
        raise ConfigError(f"unknown causal LM arch {arch!r}; expected one of {sorted(archs)}")
    config_cls, model_cls = archs[arch]
    corpus = list(corpus) if corpus is not None else None

    def build(tmp: Path) -> None:
        tokenizer = build_tokenizer(corpus, vocab_size=512, model_max_length=_CAUSAL_LM["max_position_embeddings"])
        tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
        config = config_cls(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **_CAUSAL_LM,
        )
        config._attn_implementation = "sdpa"
        model = _seeded(seed, lambda: model_cls(config))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _write_atomically(out_dir, overwrite, build)


def _seeded(seed: int, factory):
    """Call ``factory()`` under ``torch.manual_seed(seed)`` without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
