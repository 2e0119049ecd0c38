"""Offline tiny random instances of every Hugging Face VLM family dymoe is tested on.

:func:`make_tiny_family` writes a complete folder (``config.json``, random ``model.safetensors``, a tokenizer
trained offline, the family's own processor class with its PIL image processor, and a chat template in the
family's conversation format) that :func:`dymoe.models.llava.load_backbone` loads like the real checkpoint.
Sizes: text 64 × 2 layers, vision 32 × 2 layers, 16-px images (4-px patches, or 8-px where the family merges
patches), so every family builds and saves in a few seconds.

=================  ==========================================  =======================================
family             transformers model class                    what is special for batching
=================  ==========================================  =======================================
llava              LlavaForConditionalGeneration               nothing (the reference family)
llava_next         LlavaNextForConditionalGeneration           ``image_sizes``, 5-D ``pixel_values``
llava_onevision    LlavaOnevisionForConditionalGeneration      ``image_sizes``, 5-D ``pixel_values``
qwen2_vl           Qwen2VLForConditionalGeneration             flat patches + ``image_grid_thw``
qwen2_5_vl         Qwen2_5_VLForConditionalGeneration          flat patches + ``image_grid_thw``
qwen3_vl           Qwen3VLForConditionalGeneration             flat patches + ``image_grid_thw``
internvl           InternVLForConditionalGeneration            crops joined along dim 0
idefics3           Idefics3ForConditionalGeneration            ``pixel_attention_mask``, images per row
smolvlm            SmolVLMForConditionalGeneration             as idefics3 (its processor needs num2words)
paligemma          PaliGemmaForConditionalGeneration           prefix/suffix ``token_type_ids``
gemma3             Gemma3ForConditionalGeneration              ``token_type_ids`` (bidirectional image)
mllama             MllamaForConditionalGeneration              cross-attention: per-row image slots
llama, qwen2       LlamaForCausalLM, Qwen2ForCausalLM          text only (a tokenizer, no processor)
=================  ==========================================  =======================================

The processors of Qwen2/2.5/3-VL, LLaVA-OneVision, InternVL and SmolVLM carry a video processor, which
transformers builds only with torchvision installed (the ``vlm`` extra, see :mod:`dymoe.models.vision_deps`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dymoe.errors import ConfigError
from dymoe.models.tiny import (
    CLIP_MEAN,
    CLIP_STD,
    LLAVA_CHAT_TEMPLATE,
    _seeded,
    _write_atomically,
    build_tokenizer,
    make_tiny_causal_lm,
    make_tiny_llava,
)

__all__ = ["FAMILIES", "chat_template", "make_tiny_family"]

IMAGE_SIZE = 16
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False)
# Half/half of the 64-dim vision width: enough for every family's vision tower.
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def chat_template(*, user: tuple[str, str], assistant: tuple[str, str], image: str, bos: str = "",
                  system: tuple[str, str] = ("", "\n")) -> str:
    """A Jinja chat template in HF's content-list message format (plain-string contents are accepted too).

    Args:
        user: ``(prefix, suffix)`` around a user turn: ``prefix + image * n_images + text + suffix``.
        assistant: ``(prefix, suffix)`` around an answer; the answer and its suffix sit in ``{% generation %}``
            and ``prefix`` is also the generation prompt.
        image: the placeholder one image becomes in the text (the processor expands it).
        bos: text emitted once before the first message.
        system: ``(prefix, suffix)`` around a system message.
    """
    def q(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'") + "'"

    return (
        (f"{{{{ {q(bos)} }}}}" if bos else "")
        + "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}"
        "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
        "{%- else -%}"
        "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
        "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
        "{%- endif -%}"
        "{%- if message['role'] == 'system' -%}"
        f"{{{{ {q(system[0])} + texts | join('\\n') + {q(system[1])} }}}}"
        "{%- elif message['role'] == 'user' -%}"
        f"{{{{ {q(user[0])} + {q(image)} * n_images + texts | join('\\n') + {q(user[1])} }}}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{ {q(assistant[0])} }}}}{{% generation %}}{{{{ texts | join('\\n') + {q(assistant[1])} }}}}"
        "{% endgeneration %}"
        "{%- else -%}"
        "{{ raise_exception('unknown role ' + message['role'] + ': expected system, user or assistant') }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ {q(assistant[0])} }}}}{{%- endif -%}}"
    )


# ChatML (Qwen, LLaVA-OneVision, InternVL): no BOS, turns end with <|im_end|>.
def _chatml(image: str) -> str:
    return chat_template(user=("<|im_start|>user\n", "<|im_end|>\n"),
                         assistant=("<|im_start|>assistant\n", "<|im_end|>\n"), image=image,
                         system=("<|im_start|>system\n", "<|im_end|>\n"))


_CHATML = dict(names={"eos": "<|im_end|>", "pad": "<|endoftext|>"}, add_bos=False)


def _tokenizer(extra: list[str], named: dict[str, str], **kwargs):
    return build_tokenizer(vocab_size=512, model_max_length=TEXT["max_position_embeddings"], extra_tokens=extra,
                           extra_special_tokens=named, **kwargs)


def _ids(tok) -> dict[str, int]:
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _pil(name: str):
    """The PIL-backend image processor class ``name + "Pil"`` (transformers >= 5.2x) or ``name`` (older)."""
    import transformers

    return getattr(transformers, name + "Pil", None) or getattr(transformers, name)


def _video(name: str, **kwargs):
    import transformers

    return getattr(transformers, name)(**kwargs)


def _save(tmp: Path, config, model_cls, processor, seed: int, pad_token_id: int) -> None:
    config._attn_implementation = "sdpa"
    model = _seeded(seed, lambda: model_cls(config))
    model.generation_config.pad_token_id = pad_token_id
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)


# ----------------------------------------------------------------------------------------------------- families


def _llava_next(tmp: Path, seed: int) -> None:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )

    tok = _tokenizer([], {"image_token": "<image>"})
    template = LLAVA_CHAT_TEMPLATE
    tok.chat_template = template
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=4, projection_dim=32, hidden_act="quick_gelu", **VISION)
    config = LlavaNextConfig(
        text_config=LlamaConfig(vocab_size=len(tok), **_ids(tok), **TEXT), vision_config=vision,
        image_token_index=tok.image_token_id, image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32]],
        vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=16,
        tie_word_embeddings=False,
    )
    image_processor = _pil("LlavaNextImageProcessor")(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=config.image_grid_pinpoints, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=template, image_token="<image>")
    _save(tmp, config, LlavaNextForConditionalGeneration, processor, seed, tok.pad_token_id)


def _llava_onevision(tmp: Path, seed: int) -> None:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tok = _tokenizer(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<video>"],
                     {"image_token": "<image>", "video_token": "<video>"}, **_CHATML)
    template = _chatml("<image>\n")
    tok.chat_template = template
    vision = SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=4, **VISION)
    config = LlavaOnevisionConfig(
        text_config=Qwen2Config(vocab_size=len(tok), **_ids(tok), **TEXT), vision_config=vision,
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
        image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32]], vision_aspect_ratio="anyres_max_9",
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=False,
    )
    image_processor = _pil("LlavaOnevisionImageProcessor")(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=config.image_grid_pinpoints,
        image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD),
    )
    video = _video("LlavaOnevisionVideoProcessor", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video,
                                        num_image_tokens=16, vision_feature_select_strategy="full",
                                        vision_aspect_ratio="anyres_max_9", chat_template=template)
    _save(tmp, config, LlavaOnevisionForConditionalGeneration, processor, seed, tok.pad_token_id)


def _qwen_vl(version: str) -> Callable[[Path, int], None]:
    def build(tmp: Path, seed: int) -> None:
        import transformers

        prefix = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL", "3": "Qwen3VL"}[version]
        extra = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
        tok = _tokenizer(extra, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
                         **_CHATML)
        template = _chatml("<|vision_start|><|image_pad|><|vision_end|>")
        tok.chat_template = template
        # head_dim 16: multimodal RoPE sections (temporal, height, width) add up to head_dim / 2
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        text_kwargs = dict(vocab_size=len(tok), **_ids(tok), **TEXT, rope_parameters=rope)
        if version == "2":
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, patch_size=4, spatial_merge_size=2,
                          temporal_patch_size=2)
        elif version == "2.5":
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                          patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                          fullatt_block_indexes=[1])
        else:
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                          patch_size=4, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                          deepstack_visual_indexes=[0])
            text_kwargs.update(head_dim=16)
        config = getattr(transformers, f"{prefix}Config")(
            text_config=text_kwargs, vision_config=vision, image_token_id=tok.image_token_id,
            video_token_id=tok.video_token_id, vision_start_token_id=tok.vision_start_token_id,
            vision_end_token_id=tok.vision_end_token_id, tie_word_embeddings=False,
        )
        # 16x16 images: 4x4 patches of 4 px, merged 2x2 -> 4 image tokens
        pixels = dict(patch_size=4, merge_size=2, temporal_patch_size=2,
                      size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})
        image_processor = _pil("Qwen2VLImageProcessor")(**pixels)
        video_name = "Qwen3VLVideoProcessor" if version == "3" else "Qwen2VLVideoProcessor"
        video = _video(video_name, **pixels)
        processor = getattr(transformers, f"{prefix}Processor")(
            image_processor=image_processor, tokenizer=tok, video_processor=video, chat_template=template)
        _save(tmp, config, getattr(transformers, f"{prefix}ForConditionalGeneration"), processor, seed,
              tok.pad_token_id)

    return build


def _internvl(tmp: Path, seed: int) -> None:
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, Qwen2Config

    extra = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = _tokenizer(extra, {"start_image_token": "<img>", "end_image_token": "</img>",
                             "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}, **_CHATML)
    template = _chatml("<IMG_CONTEXT>\n")
    tok.chat_template = template
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[4, 4])
    # 4x4 patches, pixel-shuffled by downsample_ratio 0.5 -> 2x2 = 4 image tokens per crop
    config = InternVLConfig(
        text_config=Qwen2Config(vocab_size=len(tok), **_ids(tok), **TEXT), vision_config=vision,
        image_token_id=tok.context_image_token_id, image_seq_length=4, downsample_ratio=0.5,
        vision_feature_layer=-1, tie_word_embeddings=False,
    )
    image_processor = _pil("GotOcr2ImageProcessor")(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_to_patches=False, image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    video = _video("InternVLVideoProcessor", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video,
                                  image_seq_length=4, chat_template=template)
    _save(tmp, config, InternVLForConditionalGeneration, processor, seed, tok.pad_token_id)


def _idefics(kind: str) -> Callable[[Path, int], None]:
    def build(tmp: Path, seed: int) -> None:
        import transformers

        prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[kind]
        extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
        extra += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
        tok = _tokenizer(extra, {"image_token": "<image>"}, names={"eos": "<end_of_utterance>"})
        template = chat_template(user=("User:", "<end_of_utterance>\n"),
                                 assistant=("Assistant:", "<end_of_utterance>\n"), image="<image>", bos="<s>")
        tok.chat_template = template
        # 16x16 images in 4x4 patches (16 patches), pixel-shuffled by scale_factor 2 -> 4 image tokens
        config = getattr(transformers, f"{prefix}Config")(
            text_config=transformers.LlamaConfig(vocab_size=len(tok), **_ids(tok), **TEXT),
            vision_config=dict(VISION, image_size=IMAGE_SIZE, patch_size=4), image_token_id=tok.image_token_id,
            scale_factor=2, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
        )
        pixels = dict(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                      max_image_size={"longest_edge": IMAGE_SIZE}, image_mean=list(SIGLIP_MEAN),
                      image_std=list(SIGLIP_STD))
        image_processor = _pil(f"{prefix}ImageProcessor")(**pixels)
        kwargs = {}
        if kind == "smolvlm":
            kwargs["video_processor"] = _video("SmolVLMVideoProcessor", size={"longest_edge": IMAGE_SIZE},
                                               max_image_size={"longest_edge": IMAGE_SIZE})
        processor = getattr(transformers, f"{prefix}Processor")(
            image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=template, **kwargs)
        _save(tmp, config, getattr(transformers, f"{prefix}ForConditionalGeneration"), processor, seed,
              tok.pad_token_id)

    return build


def _paligemma(tmp: Path, seed: int) -> None:
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
    )

    # PaliGemma has no chat template: its processor writes "<image>*n<bos>{prompt}\n" and the answer follows.
    tok = _tokenizer([], {"image_token": "<image>"}, add_bos=False, names={"bos": "<bos>", "eos": "<eos>"})
    text = GemmaConfig(vocab_size=len(tok), **_ids(tok), **{**TEXT, "tie_word_embeddings": True}, head_dim=16)
    vision = dict(VISION, image_size=IMAGE_SIZE, patch_size=4, projection_dim=64, model_type="siglip_vision_model")
    config = PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=tok.image_token_id,
                             vocab_size=len(tok), projection_dim=64, hidden_size=64, pad_token_id=tok.pad_token_id)
    image_processor = _pil("SiglipImageProcessor")(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD))
    image_processor.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    _save(tmp, config, PaliGemmaForConditionalGeneration, processor, seed, tok.pad_token_id)


def _gemma3(tmp: Path, seed: int) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig

    extra = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = _tokenizer(extra, {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                             "eoi_token": "<end_of_image>"}, names={"bos": "<bos>", "eos": "<end_of_turn>"})
    template = chat_template(user=("<start_of_turn>user\n", "<end_of_turn>\n"),
                             assistant=("<start_of_turn>model\n", "<end_of_turn>\n"), image="<start_of_image>",
                             bos="<bos>")
    tok.chat_template = template
    text = Gemma3TextConfig(vocab_size=len(tok), **_ids(tok), **{**TEXT, "tie_word_embeddings": True}, head_dim=16,
                            query_pre_attn_scalar=16, sliding_window=64)
    # 16x16 image in 4x4 patches = 16 patches, average-pooled to mm_tokens_per_image = 4
    vision = dict(VISION, image_size=IMAGE_SIZE, patch_size=4, model_type="siglip_vision_model")
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id, tie_word_embeddings=True)
    image_processor = _pil("Gemma3ImageProcessor")(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD))
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                                image_seq_length=4)
    _save(tmp, config, Gemma3ForConditionalGeneration, processor, seed, tok.pad_token_id)


def _mllama(tmp: Path, seed: int) -> None:
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor

    extra = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|python_tag|>"]
    tok = _tokenizer(extra, {"image_token": "<|image|>"}, names={"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"})
    template = chat_template(user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
                             assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
                             image="<|image|>", bos="<|begin_of_text|>")
    tok.chat_template = template
    # layers 0 and 2 are self-attention, layer 1 attends to the image (Mllama counts the cross layers in)
    text = dict(vocab_size=len(tok) + 8, **_ids(tok), **{**TEXT, "num_hidden_layers": 3},
                cross_attention_layers=[1], rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    vision = dict(hidden_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=4, intermediate_size=64,
                  vision_output_dim=64, image_size=IMAGE_SIZE, patch_size=4, max_num_tiles=2,
                  intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    config = MllamaConfig(text_config=text, vision_config=vision, image_token_index=tok.image_token_id)
    image_processor = _pil("MllamaImageProcessor")(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, max_image_tiles=2, image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD))
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)
    _save(tmp, config, MllamaForConditionalGeneration, processor, seed, tok.pad_token_id)


_BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": _qwen_vl("2"),
    "qwen2_5_vl": _qwen_vl("2.5"),
    "qwen3_vl": _qwen_vl("3"),
    "internvl": _internvl,
    "idefics3": _idefics("idefics3"),
    "smolvlm": _idefics("smolvlm"),
    "paligemma": _paligemma,
    "gemma3": _gemma3,
    "mllama": _mllama,
}

# every family in the README's list, in its order
FAMILIES: tuple[str, ...] = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
                             "internvl", "idefics3", "smolvlm", "paligemma", "gemma3", "mllama", "llama", "qwen2")


def make_tiny_family(family: str, out_dir: str | os.PathLike, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a tiny random model folder of ``family`` (a key of :data:`FAMILIES`), offline.

    ``llava`` is :func:`~dymoe.models.tiny.make_tiny_llava` (preset ``test``), ``llama``/``qwen2`` are
    :func:`~dymoe.models.tiny.make_tiny_causal_lm`. Same family and seed → the same weights.

    Raises:
        ConfigError: unknown family.
        DymoeError: ``out_dir`` is not empty and ``overwrite`` is False, or the family needs the ``vlm`` extra
            and it is not installed.
    """
    if family not in FAMILIES:
        raise ConfigError(f"unknown tiny family {family!r}; expected one of {list(FAMILIES)}")
    if family == "llava":
        return make_tiny_llava(out_dir, preset="test", seed=seed, overwrite=overwrite)
    if family in ("llama", "qwen2"):
        return make_tiny_causal_lm(out_dir, arch=family, seed=seed, overwrite=overwrite)
    from dymoe.models.vision_deps import require_vision_deps

    require_vision_deps(family)
    return _write_atomically(out_dir, overwrite, lambda tmp: _BUILDERS[family](tmp, seed))
