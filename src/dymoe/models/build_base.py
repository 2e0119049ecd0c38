"""The papers' starting point: the instruction-untuned LLaVA-1.5, assembled into a Hugging Face LLaVA folder.

CoIN and the methods built on it (coin-protocol.md §6) train task 1 from **Vicuna-7B-v1.5 + CLIP ViT-L/14-336 +
the stage-1 pretrained projector** of the original LLaVA release
(``llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5/mm_projector.bin``), *not* from the instruction-tuned
``llava-hf/llava-1.5-7b-hf``. :func:`build_llava15_untuned` writes exactly that model as a
``LlavaForConditionalGeneration`` folder (safetensors, processor, chat template) that every dymoe command loads:

* language model: the Vicuna folder's weights unchanged (``model.*`` → ``model.language_model.*``, ``lm_head``);
  the vocabulary grows by ``<image>`` (id 32000 for Vicuna) and ``<pad>`` (32001) and is padded to a multiple of
  64 like llava-hf's (32064); the new embedding and ``lm_head`` rows are the mean of the old ones (deterministic;
  ``<image>`` is always replaced by image features and ``<pad>`` is masked);
* vision tower: the CLIP folder's ``vision_model`` (``model.vision_tower.vision_model.*``); features of layer −2
  without CLS (``vision_feature_layer=-2``, ``vision_feature_select_strategy="default"``) as LLaVA-1.5;
* projector: ``mm_projector.bin``, the original release's **PyTorch pickle**, read with
  ``torch.load(weights_only=True)`` (tensors only: no code in the file can run); ``model.mm_projector.0`` →
  ``multi_modal_projector.linear_1``, ``.2`` → ``linear_2``, GELU between (``mlp2x_gelu``);
* processor: the CLIP folder's image processor (336 px), the Vicuna tokenizer, ``patch_size=14``, one extra
  (CLS) token counted, so ``<image>`` expands to 576 tokens; chat template: LLaVA's ``vicuna_v1`` conversation
  (``{system} USER: <image>\\n{q} ASSISTANT: {a}</s>USER: ...``) with its default system prompt;
* ``dymoe_base.json``: what the folder is (``"instruction_tuned": false``), its sources (paths, sizes, the
  projector's sha256) and versions, for a protocol card to read.

Vicuna's own ``.bin`` shards (if it has no safetensors) are read by transformers, which also uses
``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from dymoe.errors import DymoeError

__all__ = ["BASE_CARD", "LLAVA15_SYSTEM", "build_llava15_untuned", "read_base_card", "vicuna_v1_template"]

BASE_CARD = "dymoe_base.json"
# LLaVA's conv_vicuna_v1 system prompt (the conversation format of LLaVA-1.5 and CoIN training)
LLAVA15_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_PROJECTOR_KEYS = {
    "model.mm_projector.0.weight": "model.multi_modal_projector.linear_1.weight",
    "model.mm_projector.0.bias": "model.multi_modal_projector.linear_1.bias",
    "model.mm_projector.2.weight": "model.multi_modal_projector.linear_2.weight",
    "model.mm_projector.2.bias": "model.multi_modal_projector.linear_2.bias",
}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def vicuna_v1_template(system: str | None = LLAVA15_SYSTEM) -> str:
    """LLaVA's ``vicuna_v1`` conversation as a chat template: ``{system} USER: <image>\\n{q} ASSISTANT: {a}</s>``.

    ``system`` is used when the messages bring no system message of their own (None: no default).
    """
    from dymoe.models.tiny import LLAVA_CHAT_TEMPLATE

    if not system:
        return LLAVA_CHAT_TEMPLATE
    quoted = "'" + system.replace("\\", "\\\\").replace("'", "\\'") + " '"
    return ("{%- if messages and messages[0]['role'] != 'system' -%}{{ " + quoted + " }}{%- endif -%}"
            + LLAVA_CHAT_TEMPLATE)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def read_projector(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The four projector tensors of an original-LLaVA ``mm_projector.bin`` (or ``.safetensors``), HF-named.

    Reads a pickle with ``torch.load(weights_only=True)``. Keys may carry the ``model.`` prefix or not.

    Raises:
        DymoeError: unreadable file, not a dict of tensors, or missing/unexpected keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DymoeError(f"projector file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpicklable / non-tensor payload is refused by weights_only=True
        raise DymoeError(f"cannot read the projector {path} as tensors (torch.load weights_only=True): {e}") from e
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise DymoeError(f"{path}: expected a dict of tensors (the original LLaVA mm_projector.bin)")
    named = {(k if k.startswith("model.") else "model." + k): v for k, v in raw.items()}
    missing = sorted(set(_PROJECTOR_KEYS) - set(named))
    extra = sorted(set(named) - set(_PROJECTOR_KEYS))
    if missing or extra:
        raise DymoeError(f"{path}: expected the keys {sorted(_PROJECTOR_KEYS)} (mlp2x_gelu projector); "
                         f"missing {missing}, unexpected {extra}")
    return {_PROJECTOR_KEYS[k]: v for k, v in named.items()}


def _check_folder(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise DymoeError(f"--{what} {path}: not a Hugging Face model folder (no config.json)")
    return path


def build_llava15_untuned(
    *,
    vicuna: str | os.PathLike,
    clip: str | os.PathLike,
    projector: str | os.PathLike,
    output: str | os.PathLike,
    dtype: str = "float16",
    system_prompt: str | None = LLAVA15_SYSTEM,
    overwrite: bool = False,
) -> Path:
    """Assemble the instruction-untuned LLaVA-1.5 (see the module docstring) into ``output``.

    Args:
        vicuna: the ``lmsys/vicuna-7b-v1.5`` folder (Llama config, weights, tokenizer).
        clip: the ``openai/clip-vit-large-patch14-336`` folder (``CLIPModel`` or ``CLIPVisionModel``).
        projector: the stage-1 ``mm_projector.bin`` (PyTorch pickle, read with ``weights_only=True``).
        output: the folder to write (atomically; must be missing or empty unless ``overwrite``).
        dtype: stored dtype (``float16`` like llava-hf, ``bfloat16`` or ``float32``).
        system_prompt: the chat template's default system prompt (None: none).

    Returns:
        The folder, loadable with ``LlavaForConditionalGeneration`` / ``AutoProcessor`` (and ``load_backbone``).

    Raises:
        DymoeError: a missing or malformed input, or projector shapes that do not fit the two models.
    """
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from dymoe.models.llava import load_image_processor
    from dymoe.models.tiny import _write_atomically

    if dtype not in _DTYPES:
        raise DymoeError(f"--dtype {dtype!r}: expected one of {sorted(_DTYPES)}")
    torch_dtype = _DTYPES[dtype]
    vicuna, clip, projector = _check_folder(vicuna, "vicuna"), _check_folder(clip, "clip"), Path(projector)
    proj = read_projector(projector)
    try:
        lm = LlamaForCausalLM.from_pretrained(vicuna, dtype=torch_dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(vicuna, local_files_only=True)
        vision_config = CLIPVisionConfig.from_pretrained(clip, local_files_only=True)
        vision = CLIPVisionModel.from_pretrained(clip, dtype=torch_dtype, local_files_only=True)
        image_processor = load_image_processor(clip, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise DymoeError(f"cannot load the inputs: {type(e).__name__}: {e}") from e

    text_hidden, vision_hidden = lm.config.hidden_size, vision_config.hidden_size
    want = {"model.multi_modal_projector.linear_1.weight": (text_hidden, vision_hidden),
            "model.multi_modal_projector.linear_1.bias": (text_hidden,),
            "model.multi_modal_projector.linear_2.weight": (text_hidden, text_hidden),
            "model.multi_modal_projector.linear_2.bias": (text_hidden,)}
    for key, shape in want.items():
        if tuple(proj[key].shape) != shape:
            raise DymoeError(f"{projector}: {key} has shape {tuple(proj[key].shape)}, expected {shape} "
                             f"(Vicuna hidden {text_hidden}, CLIP hidden {vision_hidden})")

    # the tokenizer: <image> and <pad> added as in llava-hf
    tokenizer.add_special_tokens({"pad_token": "<pad>"} if tokenizer.pad_token is None else {})
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    n_old = lm.config.vocab_size
    vocab = max(len(tokenizer), n_old)
    vocab = -(-vocab // 64) * 64  # padded to a multiple of 64 (llava-hf: 32064)

    sd: dict[str, torch.Tensor] = {}
    for key, value in lm.state_dict().items():
        if key.startswith("model."):
            sd["model.language_model." + key[len("model."):]] = value
        else:
            sd[key] = value  # lm_head.weight
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        old = sd[key]  # [n_old, hidden]
        grown = old.new_empty((vocab, old.shape[1]))
        grown[:n_old] = old
        grown[n_old:] = old.float().mean(0, keepdim=True).to(old.dtype)
        sd[key] = grown
    for key, value in vision.state_dict().items():
        sd["model.vision_tower." + key] = value
    sd.update({k: v.to(torch_dtype) for k, v in proj.items()})

    text_config = lm.config.to_dict()
    text_config.update(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(
        text_config=text_config, vision_config=vision_config.to_dict(), image_token_index=image_id,
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.text_config.vocab_size = vocab
    config.dtype = dtype
    template = vicuna_v1_template(system_prompt)
    tokenizer.chat_template = template
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=vision_config.patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template, image_token="<image>")
    card = {
        "format": "dymoe-base/1",
        "kind": "llava-1.5-untuned",
        "instruction_tuned": False,
        "description": "Vicuna-7B-v1.5 + CLIP ViT-L/14-336 + the stage-1 pretrained mlp2x_gelu projector of the "
                       "original LLaVA-1.5 release: the starting point of CoIN-style continual instruction tuning",
        "sources": {
            "vicuna": {"path": str(vicuna.resolve()), "files": _files(vicuna)},
            "clip": {"path": str(clip.resolve()), "files": _files(clip)},
            "projector": {"path": str(projector.resolve()), "sha256": _sha256(projector),
                          "read_with": "torch.load(weights_only=True)"},
        },
        "image_token_id": image_id, "pad_token_id": tokenizer.pad_token_id, "vocab_size": vocab,
        "new_token_rows": "mean of the existing embedding / lm_head rows",
        "dtype": dtype,
        "system_prompt": system_prompt,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def build(tmp: Path) -> None:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        persistent = {k for k, _ in model.named_parameters()} | {
            name for name, _ in _persistent_buffers(model)}
        missing = [k for k in missing if k in persistent]
        if missing or unexpected:
            raise DymoeError(f"assembling the LLaVA state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.generation_config = lm.generation_config
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / BASE_CARD).write_text(json.dumps(card, indent=1) + "\n")

    return _write_atomically(output, overwrite, build)


def _persistent_buffers(model: torch.nn.Module):
    for mod_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


def _versions() -> dict[str, str]:
    import transformers

    import dymoe

    return {"dymoe": dymoe.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def read_base_card(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``dymoe_base.json`` of a backbone folder built by ``dymoe build-base`` (None if it has none)."""
    path = Path(folder) / BASE_CARD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DymoeError(f"{path} is not valid JSON: {e}") from e
