"""Tests of dymoe.models.tiny: the offline tiny LLaVA / causal-LM folders."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from dymoe.errors import ConfigError, DymoeError
from dymoe.models.tiny import (
    LLAVA_CHAT_TEMPLATE,
    PRESETS,
    SPECIAL_TOKENS,
    build_tokenizer,
    make_tiny_llava,
    preset_config,
)


def _weights_hash(folder) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor in model.safetensors, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(load_file(folder / "model.safetensors").items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def model(tiny_llava_dir):
    return LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()


# ----------------------------------------------------------------------------------------------- files and config


def test_folder_has_the_llava_hf_files(tiny_llava_dir):
    names = {p.name for p in tiny_llava_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # safetensors only
    assert not list(tiny_llava_dir.parent.glob(".llava.tmp-*"))  # temp folder moved into place


def test_config_matches_llava_15_layout(model):
    c = model.config
    assert c.model_type == "llava" and c.text_config.model_type == "llama"
    assert c.vision_config.model_type == "clip_vision_model"
    assert c.vision_feature_select_strategy == "default" and c.vision_feature_layer == -2
    assert c.tie_word_embeddings is False and c.text_config.tie_word_embeddings is False
    assert c.text_config._attn_implementation == "sdpa"
    assert c.image_seq_length == (16 // 4) ** 2 == 16
    assert c.text_config.vocab_size == 512
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)


def _expected_num_params(p, vocab: int) -> int:
    """Parameter count of a preset written out by hand (Llama + CLIP vision + 2-layer projector)."""
    h, i, hv, iv = p.hidden, p.intermediate, p.vision_hidden, p.vision_intermediate
    llama_layer = 4 * h * h + 3 * h * i + 2 * h  # q,k,v,o (no bias, kv heads = heads) + gate,up,down + 2 RMSNorms
    llama = 2 * vocab * h + p.layers * llama_layer + h  # embed + lm_head (untied) + layers + final norm
    clip_layer = 4 * (hv * hv + hv) + (hv * iv + iv) + (iv * hv + hv) + 2 * 2 * hv  # attn + fc1,fc2 + 2 LayerNorms
    n_pos = p.num_image_tokens + 1  # + CLS
    clip = 3 * p.patch_size**2 * hv + hv + n_pos * hv + 2 * hv + p.vision_layers * clip_layer + 2 * hv
    projector = (hv * h + h) + (h * h + h)
    return llama + clip + projector


@pytest.mark.parametrize(("preset", "documented"), [("test", 173_376), ("demo", 1_207_680), ("small", 5_469_952)])
def test_preset_parameter_counts(preset, documented):
    vocab = PRESETS[preset].vocab_target  # the built-in corpus reaches the target vocabulary
    assert _expected_num_params(PRESETS[preset], vocab) == documented
    with torch.device("meta"):
        m = LlavaForConditionalGeneration(preset_config(preset, vocab))
    assert sum(p.numel() for p in m.parameters()) == documented


def test_preset_config_rejects_unknown_preset():
    with pytest.raises(ConfigError, match="unknown tiny preset 'huge'.*demo"):
        preset_config("huge", 512)


# --------------------------------------------------------------------------------------------- weights and reload


def test_reload_gives_the_in_memory_model(tiny_llava_dir, model):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the fixture's seed
        fresh = LlavaForConditionalGeneration(preset_config("test", 512)).eval()
    ids = torch.tensor([[1] + [4] * 16 + [40, 41, 42, 43, 2]])  # <s>, 16 image tokens, text, </s>
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = fresh(input_ids=ids, pixel_values=pixels).logits
        got = model(input_ids=ids, pixel_values=pixels).logits
    assert got.shape == (1, 22, 512)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_same_seed_same_weights_other_seed_differs(tiny_llava_dir, tmp_path):
    again = make_tiny_llava(tmp_path / "again", seed=0)
    other = make_tiny_llava(tmp_path / "other", seed=1)
    assert _weights_hash(again) == _weights_hash(tiny_llava_dir)
    assert (again / "tokenizer.json").read_text() == (tiny_llava_dir / "tokenizer.json").read_text()
    assert _weights_hash(other) != _weights_hash(tiny_llava_dir)


def test_seed_does_not_disturb_the_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_llava(tmp_path / "m", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DymoeError, match=r"busy is not empty; pass overwrite=True"):
        make_tiny_llava(out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temp folder left behind
    make_tiny_llava(out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert (make_tiny_llava(tmp_path / "empty") / "config.json").exists()


# ------------------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_specials_and_bos(processor):
    tok = processor.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    assert tok.image_token == "<image>" and tok.image_token_id == 4
    ids = tok("A. cat</s>").input_ids
    assert ids[0] == 1 and ids[-1] == 2  # <s> prepended, "</s>" in text is the eos token
    assert tok("<image>\nhi", add_special_tokens=False).input_ids[0] == 4


@pytest.mark.parametrize("text", ["Answer: [0.12, 0.34, 0.56, 0.78]", "Zürich → 東京 🙂 ~`^|", "  two  spaces\n\ttab"])
def test_any_text_round_trips(processor, text):
    tok = processor.tokenizer
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_build_tokenizer_on_a_custom_corpus():
    tok = build_tokenizer(["hello world"] * 50, vocab_size=300)
    assert 256 + len(SPECIAL_TOKENS) < len(tok) <= 300
    assert tok.convert_ids_to_tokens(tok("hello world", add_special_tokens=False).input_ids) == ["hello", "Ġworld"]
    with pytest.raises(ConfigError, match="vocab_size=100 must be at least 261"):
        build_tokenizer(["x"], vocab_size=100)


# -------------------------------------------------------------------------------------------------- chat template


def _user(text, image=True):
    return {"role": "user", "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}


def _assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize(
    ("messages", "generation_prompt", "expected"),
    [
        ([_user("What is this?"), _assistant("A cat.")], False, "USER: <image>\nWhat is this? ASSISTANT: A cat.</s>"),
        ([_user("What is this?")], True, "USER: <image>\nWhat is this? ASSISTANT:"),
        ([_user("Say hi.", image=False)], True, "USER: Say hi. ASSISTANT:"),
        ([_user("Say hi.", image=False), _assistant("hi")], False, "USER: Say hi. ASSISTANT: hi</s>"),
        ([_user("Q1?"), _assistant("A1"), _user("Q2?", image=False), _assistant("A2")], False,
         "USER: <image>\nQ1? ASSISTANT: A1</s>USER: Q2? ASSISTANT: A2</s>"),
        ([_user("Q1?"), _assistant("A1"), _user("Q2?", image=False)], True,
         "USER: <image>\nQ1? ASSISTANT: A1</s>USER: Q2? ASSISTANT:"),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], True,
         "Be brief. USER: Hi ASSISTANT:"),
    ],
    ids=["single-turn", "generation-prompt", "text-only-prompt", "text-only", "multi-turn", "multi-turn-prompt",
         "string-content-and-system"],
)
def test_chat_template_renders_llava_15(processor, messages, generation_prompt, expected):
    assert processor.apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected
    assert processor.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                                   tokenize=False) == expected


def test_chat_template_marks_answer_tokens(processor):
    out = processor.tokenizer.apply_chat_template(
        [_user("Say hi.", image=False), _assistant("hi there")], tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    answer = [i for i, m in zip(ids, mask) if m]
    assert processor.tokenizer.decode(answer) == "hi there</s>"


def test_chat_template_rejects_unknown_role(processor):
    with pytest.raises(Exception, match="unknown role tool"):
        processor.apply_chat_template([{"role": "tool", "content": "x"}])


def test_template_constant_is_what_was_saved(processor):
    assert processor.chat_template == LLAVA_CHAT_TEMPLATE


# -------------------------------------------------------------------------------------------- processor and model


def test_processor_emits_as_many_image_tokens_as_the_model_expects(processor, model):
    prompt = processor.apply_chat_template([_user("What is this?")], add_generation_prompt=True)
    image = Image.new("RGB", (40, 24), (200, 10, 10))  # not square, not 16x16: resized + cropped
    enc = processor(images=image, text=prompt, return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 16, 16)
    n_image = int((enc["input_ids"] == model.config.image_token_id).sum())
    assert n_image == model.config.image_seq_length == 16
    with torch.no_grad():
        features = model.get_image_features(pixel_values=enc["pixel_values"])
        logits = model(**enc).logits
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    assert sum(f.shape[0] for f in features) == n_image  # one projected feature per image token
    assert logits.shape == (1, enc["input_ids"].shape[1], 512) and torch.isfinite(logits).all()


def test_generate_left_padded_batch_of_image_and_text_prompts(processor, model):
    tok = processor.tokenizer
    assert tok.padding_side == "left"
    prompts = [
        processor.apply_chat_template([_user("What is this?")], add_generation_prompt=True),
        processor.apply_chat_template([_user("Tell me a long story about cats.", image=False)],
                                      add_generation_prompt=True),
    ]
    image = Image.new("RGB", (16, 16), (10, 200, 10))
    batch = processor(images=[image], text=prompts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][0].all()  # row 1 is left-padded
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
        alone = model.generate(**processor(text=prompts[1], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    # Left padding must not change what the text-only row generates.
    assert out[1, -4:].tolist() == alone[0, -4:].tolist()


def test_causal_lm_folder_loads(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    m = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    assert m.config.model_type == "qwen2" and m.config.vocab_size == len(tok) == 512
    assert tok.apply_chat_template([_user("Hi", image=False)], add_generation_prompt=True, tokenize=False) == (
        "USER: Hi ASSISTANT:")
    with torch.no_grad():
        out = m.generate(**tok("USER: Hi ASSISTANT:", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == len(tok("USER: Hi ASSISTANT:").input_ids) + 3


def test_make_tiny_causal_lm_rejects_unknown_arch(tmp_path):
    from dymoe.models.tiny import make_tiny_causal_lm

    with pytest.raises(ConfigError, match="unknown causal LM arch 'gpt2'"):
        make_tiny_causal_lm(tmp_path / "x", arch="gpt2")
