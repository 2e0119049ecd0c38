"""Injection into real Hugging Face models (LLaVA, Llama, Qwen2), gradient checkpointing, and checkpoints."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from dymoe.errors import CheckpointError, ConfigError
from dymoe.injection import AdapterConfig, inject, load_adapter, save_adapter
from dymoe.layers.moe_lora import MoELoRALinear

TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def tiny_llava(seed=0):
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        text_config={"model_type": "llama", **TEXT, "pad_token_id": 1},
        vision_config={"image_size": 8, "patch_size": 2, "num_channels": 3, "hidden_size": 16, "projection_dim": 16,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24},
        image_token_index=5, vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=16,
    )
    return LlavaForConditionalGeneration(cfg).eval()


def tiny_lm(arch="llama", seed=0):
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**TEXT)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**TEXT)).eval()


def llava_inputs(batch=2):
    torch.manual_seed(1)
    ids = torch.randint(6, 64, (batch, 24))
    ids[:, 2:18] = 5  # 16 image tokens
    am = torch.ones_like(ids)
    am[0, :3] = 0  # left padding on the first sample
    return {"input_ids": ids, "attention_mask": am, "pixel_values": torch.randn(batch, 3, 8, 8)}


def small_cfg(**kw):
    base = dict(experts_per_group=4, expert_rank=2, top_k=3, alpha=16.0, dropout=0.0, router="cosine", temperature=0.1)
    base.update(kw)
    return AdapterConfig(**base)


def test_llava_only_language_model_is_wrapped():
    model = tiny_llava()
    adapter = inject(model, small_cfg())
    assert len(adapter.modules) == 7 * 2
    assert all(n.startswith("model.language_model.layers.") for n in adapter.modules)
    vision_q = [n for n, m in model.named_modules() if "vision_tower" in n and n.endswith("q_proj")]
    assert vision_q, "the CLIP tower has q_proj modules, so scoping matters"
    assert all(type(model.get_submodule(n)) is nn.Linear for n in vision_q)
    assert not any(p.requires_grad for p in model.parameters())
    adapter.add_group(0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[1] in ("lora_A", "lora_B", "router") for n in trainable)
    assert adapter.num_parameters(trainable_only=True) == 14 * 0 + sum(
        m.lora_A.numel() + m.lora_B.numel() + m.router.numel() for m in adapter.modules.values()
    )


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_plain_causal_lm(arch):
    model = tiny_lm(arch)
    ids = torch.randint(0, 64, (2, 9))
    ref = model(input_ids=ids).logits
    adapter = inject(model, small_cfg())
    assert len(adapter.modules) == 14 and all(n.startswith("model.layers.") for n in adapter.modules)
    adapter.add_group(0)
    # a first group (B = 0) is a no-op
    assert torch.equal(model(input_ids=ids).logits, ref)


def test_unknown_targets_and_bad_config_are_clear_errors():
    with pytest.raises(ConfigError, match="matched no nn.Linear"):
        inject(tiny_lm(), small_cfg(targets=["qkv_fused"]))
    with pytest.raises(ConfigError, match="adapter.router must be one of"):
        small_cfg(router="softmax")
    with pytest.raises(ConfigError, match="unknown adapter config keys"):
        AdapterConfig.from_dict({"rank": 3})


@pytest.mark.parametrize("experts,rank,bank,alpha,scaling", [
    (16, 4, None, None, 2.0),     # the DyMoE default: bank 64, alpha 2 x 64 = 128 (A6)
    (16, 1, None, None, 2.0),     # capacity ablation, rank 1: alpha follows the bank (32), scaling stays 2
    (16, 2, None, 128.0, 4.0),    # fixed alpha: 128 / 32
    (8, 8, None, None, 2.0),      # 8 experts x rank 8 (Table 9): bank 64
    (1, 128, 128, None, 2.0),     # CoIN's LoRA r128 -> alpha 256
    (4, 2, 16, None, 2.0),        # an explicit bank rank is what alpha ties to
])
def test_alpha_is_tied_to_twice_the_bank_rank_unless_fixed(experts, rank, bank, alpha, scaling):
    cfg = AdapterConfig(experts_per_group=experts, expert_rank=rank, bank_rank=bank, alpha=alpha)
    want_bank = bank or experts * rank
    assert cfg.effective_alpha == (alpha if alpha is not None else 2.0 * want_bank)
    adapter = inject(tiny_lm(), dataclasses.replace(cfg, dropout=0.0))
    assert all(m.scaling == scaling and m.bank_rank == want_bank for m in adapter.modules.values())
    # the stored config keeps "tied" (None) so a checkpoint reloads with the same scaling
    assert AdapterConfig.from_dict(cfg.to_dict()).effective_alpha == cfg.effective_alpha
    with pytest.raises(ConfigError, match="adapter.alpha"):
        AdapterConfig(alpha=0.0)


def test_regex_targets_can_reach_the_vision_tower_when_asked():
    model = tiny_llava()
    adapter = inject(model, small_cfg(targets=[r"re:.*vision_tower.*\.q_proj"], scope=""))
    assert len(adapter.modules) == 2 and all("vision_tower" in n for n in adapter.modules)


def test_attention_mask_reaches_observers():
    model = tiny_llava()
    adapter = inject(model, small_cfg())
    adapter.add_group(0)
    events = []
    adapter.context.observers.append(events.append)
    adapter.context.recording = True
    inputs = llava_inputs()
    model(**inputs)
    assert len(events) == 14
    assert events[0].token_mask.tolist() == inputs["attention_mask"].reshape(-1).bool().tolist()


def _step_grads(gc: bool):
    model = tiny_llava()
    adapter = inject(model, small_cfg(dropout=0.0))
    adapter.add_group(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.lora_B.normal_(std=0.1)
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    events = []
    # an observer-side loss, as RSR / load balancing compute theirs: stash in forward, compute afterwards
    adapter.context.observers.append(events.append)
    adapter.context.recording = True
    inputs = llava_inputs()
    out = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["input_ids"] == 5, -100))
    adapter.context.recording = False  # backward's recomputation must not record again
    aux = [(ev.weights[:, :2].sum(-1) ** 2).mean() for ev in events]
    loss = out.loss + 0.5 * torch.stack(aux).mean()
    loss.backward()
    n_events = len(aux)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, loss.detach(), n_events


def test_gradient_checkpointing_gives_the_same_gradients_including_observer_losses():
    g_plain, l_plain, n_plain = _step_grads(gc=False)
    g_gc, l_gc, n_gc = _step_grads(gc=True)
    assert n_plain == n_gc == 14
    torch.testing.assert_close(l_gc, l_plain)
    assert g_plain.keys() == g_gc.keys()
    for k in g_plain:
        torch.testing.assert_close(g_gc[k], g_plain[k], atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for k, g in g_plain.items() if k.endswith("router"))


def _trained_adapter():
    model = tiny_llava()
    adapter = inject(model, small_cfg())
    adapter.add_group(0)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.lora_B.normal_(std=0.2)
    adapter.fold()
    adapter.add_group(1)
    with torch.no_grad():
        for m in adapter.modules.values():
            m.lora_B.normal_(std=0.2)
            m.router.normal_()
    first = next(iter(adapter.modules))
    adapter.prune({first: [adapter.modules[first].expert_id.tolist()[-1]]})
    return model, adapter


def test_save_load_reproduces_outputs_exactly(tmp_path):
    model, adapter = _trained_adapter()
    inputs = llava_inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
    save_adapter(adapter, tmp_path / "ckpt", metadata={"task": 2}, method_state={"fisher": torch.ones(3)})
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["adapter.json", "adapter.safetensors", "method_state.safetensors"]
    assert not list(tmp_path.glob(".*")), "no temporary directory left behind"
    fresh = tiny_llava()
    adapter2, meta = load_adapter(fresh, tmp_path / "ckpt")
    assert meta == {"task": 2}
    assert adapter2.structure() == adapter.structure()
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, ref)
    # only the added tensors are stored
    keys = load_file(str(tmp_path / "ckpt" / "adapter.safetensors")).keys()
    assert all(k.rsplit(".", 1)[1] in ("frozen_A", "frozen_B", "frozen_router", "lora_A", "lora_B", "router") for k in keys)


def test_checkpoint_with_wrong_shape_or_missing_key_names_the_key(tmp_path):
    _, adapter = _trained_adapter()
    ckpt = save_adapter(adapter, tmp_path / "ckpt")
    tensors = load_file(str(ckpt / "adapter.safetensors"))
    key = "model.language_model.layers.1.mlp.up_proj.frozen_A"
    bad = dict(tensors)
    bad[key] = torch.zeros(3, 3)
    save_file(bad, str(ckpt / "adapter.safetensors"))
    with pytest.raises(CheckpointError, match=f"key '{key}' has shape \\(3, 3\\)"):
        load_adapter(tiny_llava(), ckpt)
    del bad[key]
    save_file(bad, str(ckpt / "adapter.safetensors"))
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        load_adapter(tiny_llava(), ckpt)
    meta = json.loads((ckpt / "adapter.json").read_text())
    meta["format"] = "pickle"
    (ckpt / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format is 'pickle'"):
        load_adapter(tiny_llava(), ckpt)
    with pytest.raises(CheckpointError, match="adapter.json is missing"):
        load_adapter(tiny_llava(), tmp_path / "nothing")


def test_overwriting_a_checkpoint_is_atomic(tmp_path):
    _, adapter = _trained_adapter()
    save_adapter(adapter, tmp_path / "ckpt", metadata={"v": 1})
    save_adapter(adapter, tmp_path / "ckpt", metadata={"v": 2})
    assert json.loads((tmp_path / "ckpt" / "adapter.json").read_text())["metadata"] == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_all_wrapped_modules_share_one_context():
    adapter = inject(tiny_lm(), small_cfg())
    assert len({id(m.context) for m in adapter.modules.values()}) == 1
    assert all(isinstance(m, MoELoRALinear) for m in adapter.modules.values())
