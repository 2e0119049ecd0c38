"""Tests of dymoe.models.llava: load_backbone and the backbone helpers, on the tiny offline folders."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerBase

from dymoe.errors import ConfigError, DymoeError
from dymoe.models.llava import (
    image_background_color,
    image_token_id,
    is_multimodal_config,
    language_model_prefix,
    load_backbone,
    num_image_tokens,
)

ATTN_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return load_backbone(tiny_llava_dir)


# ---------------------------------------------------------------------------------------------------- load_backbone


def test_loads_llava_folder_offline(llava, tiny_llava_dir):
    model, processor = llava
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.text_config._attn_implementation == "sdpa"
    assert is_multimodal_config(model.config)
    # Same weights as transformers' own loader.
    ref = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    for (name, p), (ref_name, q) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert name == ref_name and torch.equal(p, q), name


def test_dtype_and_attn_are_passed_through(tiny_llava_dir):
    model, _ = load_backbone(tiny_llava_dir, dtype="bfloat16", attn_implementation="eager", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.text_config._attn_implementation == "eager"
    model, _ = load_backbone(str(tiny_llava_dir), dtype="auto")  # config.json says float32
    assert next(model.parameters()).dtype == torch.float32


def test_bad_dtype_is_a_config_error(tiny_llava_dir):
    with pytest.raises(ConfigError, match="dtype 'fp8' is not supported; expected one of"):
        load_backbone(tiny_llava_dir, dtype="fp8")


@pytest.mark.parametrize(("fixture", "model_type"), [("tiny_llama_lm_dir", "llama"), ("tiny_qwen2_dir", "qwen2")])
def test_text_only_folder_gives_causal_lm_and_tokenizer(request, fixture, model_type):
    model, tokenizer = load_backbone(request.getfixturevalue(fixture))
    assert model.config.model_type == model_type and type(model).__name__.endswith("ForCausalLM")
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert not is_multimodal_config(model.config)
    assert language_model_prefix(model) == "model"


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "llava"
    with pytest.raises(DymoeError, match=rf"model path '{missing}' does not exist.*HF_HUB_OFFLINE=0"):
        load_backbone(missing)


def test_hub_id_while_offline_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DymoeError, match=r"'llava-hf/llava-1.5-7b-hf' does not exist.*HF_HUB_OFFLINE=0"):
        load_backbone("llava-hf/llava-1.5-7b-hf")


def test_hub_id_is_passed_through_when_online(monkeypatch):
    """With HF_HUB_OFFLINE=0 the id reaches transformers; we stub AutoConfig so nothing is downloaded."""
    import transformers

    seen = {}

    def fake_from_pretrained(source, **kwargs):
        seen.update(source=source, **kwargs)
        raise OSError("no network here")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_from_pretrained)
    with pytest.raises(DymoeError, match="cannot read the model config llava-hf/llava-1.5-7b-hf: no network"):
        load_backbone("llava-hf/llava-1.5-7b-hf")
    assert seen == {"source": "llava-hf/llava-1.5-7b-hf", "trust_remote_code": False}


def test_online_but_path_like_source_is_still_a_missing_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(DymoeError, match="does not exist"):
        load_backbone(tmp_path / "a" / "b")


def test_folder_without_config_and_file_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DymoeError, match="empty has no config.json"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(DymoeError, match="weights.safetensors is a file; expected a Hugging Face model folder"):
        load_backbone(tmp_path / "weights.safetensors")


def test_corrupt_config_is_a_dymoe_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(DymoeError, match=r"cannot read the model config .*bad/config.json"):
        load_backbone(tmp_path / "bad")


def test_missing_weights_is_a_dymoe_error(tiny_llava_dir, tmp_path):
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tiny_llava_dir / "config.json").read_text())
    with pytest.raises(DymoeError, match="cannot load the model at .*noweights"):
        load_backbone(tmp_path / "noweights")


# ---------------------------------------------------------------------------------------------------------- helpers


def test_language_model_prefix_scopes_out_the_vision_tower(llava):
    model, _ = llava
    prefix = language_model_prefix(model)
    assert prefix == "model.language_model"
    names = [n for n, _ in model.named_modules()]
    vision_q = [n for n in names if "vision_tower" in n and n.endswith("q_proj")]
    assert len(vision_q) == model.config.vision_config.num_hidden_layers  # CLIP has q_proj too: scoping matters
    lm_targets = [n for n in names if n.startswith(prefix + ".") and n.split(".")[-1] in ATTN_MLP]
    assert len(lm_targets) == 7 * model.config.text_config.num_hidden_layers
    assert not any("vision_tower" in n or "projector" in n for n in lm_targets)
    assert model.get_submodule(prefix) is model.model.language_model


def test_language_model_prefix_of_a_bare_decoder_and_a_wrapper(llava):
    model, _ = llava
    assert language_model_prefix(model.model.language_model) == ""

    class Wrapper(torch.nn.Module):  # no get_decoder: found by the "language_model" name
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Module()
            self.backbone.language_model = torch.nn.Linear(2, 2)

    assert language_model_prefix(Wrapper()) == "backbone.language_model"
    with pytest.raises(DymoeError, match="cannot find the language model inside Linear"):
        language_model_prefix(torch.nn.Linear(2, 2))


def test_num_image_tokens(llava):
    model, processor = llava
    # (16 // 4) ** 2 patches; CLS counted by the processor (num_additional_image_tokens=1) and dropped by "default".
    assert num_image_tokens(processor) == (16 // 4) ** 2 == model.config.image_seq_length


def test_image_token_id_from_model_processor_and_tokenizer(llava):
    model, processor = llava
    assert image_token_id(model) == image_token_id(processor) == image_token_id(processor.tokenizer) == 4
    assert processor.tokenizer.convert_ids_to_tokens(4) == "<image>"


def test_text_only_backbones_have_no_image_token(tiny_llama_lm_dir):
    model, tokenizer = load_backbone(tiny_llama_lm_dir)
    with pytest.raises(DymoeError, match="LlamaForCausalLM has no image token"):
        image_token_id(model)
    with pytest.raises(DymoeError, match="has no image processor"):
        image_background_color(tokenizer)


def test_image_background_color_is_clip_mean_times_255(llava):
    _, processor = llava
    # LLaVA's expand2square: tuple(int(x * 255) for x in image_mean); CLIP mean (0.4815, 0.4578, 0.4082).
    assert image_background_color(processor) == (122, 116, 104)


def test_unknown_model_type_is_a_dymoe_error(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "not_a_model_type"}')
    with pytest.raises(DymoeError, match=r"cannot read the model config .*odd/config.json"):
        load_backbone(tmp_path / "odd")


def test_importing_dymoe_models_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, dymoe.models; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
