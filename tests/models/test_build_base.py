"""``dymoe build-base llava-1.5-untuned`` on tiny random Vicuna / CLIP / projector files in the original layouts.

Original layouts: Vicuna as ``pytorch_model-0000N-of-00002.bin`` shards + index + Llama config + tokenizer without
``<image>``/``<pad>`` (the real one also ships ``tokenizer.model``; ours is a ``tokenizer.json``: no sentencepiece
offline); CLIP as a full ``CLIPModel`` (text + vision) ``pytorch_model.bin`` + ``preprocessor_config.json``;
the projector as a pickled dict ``model.mm_projector.{0,2}.{weight,bias}``. The references are the inputs
themselves: the text path must give Vicuna's own logits, the image features CLIP layer -2 (no CLS) through the
projector computed by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dymoe.cli.main import main
from dymoe.models.build_base import BASE_CARD, LLAVA15_SYSTEM, read_projector


def _vicuna_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from dymoe.models.tiny import default_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(default_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("originals")
    torch.manual_seed(0)
    tok = _vicuna_tokenizer()
    vicuna = root / "vicuna-7b-v1.5"
    vicuna.mkdir()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=128, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    lm = LlamaForCausalLM(cfg)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(vicuna)
    lm.generation_config.save_pretrained(vicuna)
    tok.save_pretrained(vicuna)
    sd = lm.state_dict()
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        torch.save({k: sd[k].clone() for k in ks}, vicuna / name)
        weight_map.update({k: name for k in ks})
    (vicuna / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    clip = root / "clip-vit-large-patch14-336"
    clip.mkdir()
    ccfg = CLIPConfig(text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=99),
                      vision_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=64, image_size=28, patch_size=14), projection_dim=16)
    clip_model = CLIPModel(ccfg)
    ccfg.architectures = ["CLIPModel"]
    ccfg.save_pretrained(clip)
    torch.save(clip_model.state_dict(), clip / "pytorch_model.bin")
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(clip)

    projector = root / "mm_projector.bin"
    proj = {"model.mm_projector.0.weight": torch.randn(64, 32) * 0.1, "model.mm_projector.0.bias": torch.randn(64),
            "model.mm_projector.2.weight": torch.randn(64, 64) * 0.1, "model.mm_projector.2.bias": torch.randn(64)}
    torch.save(proj, projector)
    return {"vicuna": vicuna, "clip": clip, "projector": projector, "lm": lm.eval(), "clip_model": clip_model.eval(),
            "proj": proj, "tokenizer": tok}


@pytest.fixture(scope="module")
def built(originals, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "llava-1.5-7b-untuned"
    code = main(["build-base", "llava-1.5-untuned", "--vicuna", str(originals["vicuna"]), "--clip",
                 str(originals["clip"]), "--projector", str(originals["projector"]), "--output", str(out),
                 "--dtype", "float32"])
    assert code == 0
    return out


def test_folder_loads_as_llava_with_processor_template_and_card(built, originals):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(built)
    processor = AutoProcessor.from_pretrained(built)
    n_old = len(originals["tokenizer"])
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == n_old + 1
    assert processor.tokenizer.pad_token == "<pad>" and processor.tokenizer.pad_token_id == n_old
    assert model.config.text_config.vocab_size % 64 == 0 and model.config.vision_feature_layer == -2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == f"{LLAVA15_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:"
    enc = processor(images=Image.new("RGB", (28, 28)), text=prompt, return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == (28 // 14) ** 2
    card = json.loads((built / BASE_CARD).read_text())
    assert card["kind"] == "llava-1.5-untuned" and card["instruction_tuned"] is False
    assert card["sources"]["projector"]["read_with"] == "torch.load(weights_only=True)"
    assert len(card["sources"]["projector"]["sha256"]) == 64


def test_text_path_is_vicuna_and_image_path_is_clip_minus_2_through_the_projector(built, originals):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(built).eval()
    ids = originals["tokenizer"]("What color is the car?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        vicuna = originals["lm"](input_ids=ids).logits
    n = vicuna.shape[-1]
    assert torch.equal(ours[..., :n], vicuna)  # the Vicuna weights, unchanged
    # the new rows (<pad>, <image>, padding to 64) are the mean of the old ones
    emb = model.get_input_embeddings().weight
    assert torch.allclose(emb[n:], emb[:n].mean(0, keepdim=True).expand(emb.shape[0] - n, -1), atol=1e-6)

    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=pixels)
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats
        hidden = originals["clip_model"].vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        x = hidden[-2][:, 1:]  # layer -2, CLS dropped
        p = originals["proj"]
        x = torch.nn.functional.linear(x, p["model.mm_projector.0.weight"], p["model.mm_projector.0.bias"])
        x = torch.nn.functional.gelu(x)
        want = torch.nn.functional.linear(x, p["model.mm_projector.2.weight"], p["model.mm_projector.2.bias"])
    torch.testing.assert_close(feats.reshape(want.shape), want, atol=1e-5, rtol=1e-5)


def test_projector_pickle_with_code_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    bad = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.0.weight": Evil()}, bad)
    with pytest.raises(Exception, match="weights_only=True"):
        read_projector(bad)
    wrong = tmp_path / "wrong.bin"
    torch.save({"model.mm_projector.0.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(Exception, match="missing"):
        read_projector(wrong)


def test_bad_inputs_are_clear_errors(originals, tmp_path, capsys):
    code = main(["build-base", "llava-1.5-untuned", "--vicuna", str(tmp_path / "nope"), "--clip",
                 str(originals["clip"]), "--projector", str(originals["projector"]), "--output", str(tmp_path / "o")])
    assert code == 2 and "not a Hugging Face model folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
