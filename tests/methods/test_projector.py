"""Training the projector beside the adapter (``projector_lr``): trainable, its own optimizer group, saved and
restored with the method state, covered by LwF's teacher and EWC's Fisher, fp32 master weights under bf16."""

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

from dymoe.errors import ConfigError
from dymoe.injection import AdapterConfig, inject
from dymoe.methods import TaskInfo, build_method
from dymoe.methods.base import attach_method_modules
from dymoe.methods.projector import find_projector
from dymoe.models.tiny import preset_config
from dymoe.runner.trainer import param_groups


def tiny(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(preset_config("test", 512)).to(dtype).eval()


def build(spec, seed=0, dtype=torch.float32):
    model = tiny(seed, dtype)
    method = build_method(spec)
    attach_method_modules(model, method)  # as the runner does
    adapter = inject(model, method.configure_adapter(AdapterConfig(experts_per_group=4, expert_rank=2, dropout=0.0)))
    method.setup(model, adapter)
    method.before_task(TaskInfo(0, "t0", 2))
    return model, adapter, method


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (2, 1 + 16 + 8), generator=g)
    ids[:, 0], ids[:, 1:17] = 1, 4
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


def test_projector_is_found_and_frozen_unless_asked():
    name, module = find_projector(tiny())
    assert name == "model.multi_modal_projector"
    assert sum(p.numel() for p in module.parameters()) == (32 * 64 + 64) + (64 * 64 + 64)  # 32 -> 64 -> 64
    _, _, frozen = build({"name": "lora"})
    assert frozen.projector is None and frozen.extra_parameters() == [] and frozen.lr_groups() == []
    assert frozen.checkpoint_state() == {}


def test_projector_trains_at_its_own_learning_rate_and_round_trips():
    model, adapter, method = build({"name": "lora", "projector_lr": 1e-3})
    proj = dict(model.model.multi_modal_projector.named_parameters())
    assert all(p.requires_grad for p in proj.values())
    assert [id(p) for p in method.extra_parameters()] == [id(p) for p in proj.values()]
    params = adapter.trainable_parameters() + method.extra_parameters()
    groups = param_groups(params, method)
    assert [g["name"] for g in groups] == ["main", "projector"] and groups[1]["lr"] == 1e-3
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in adapter.trainable_parameters()}
    opt = torch.optim.AdamW(groups, lr=5e-2)
    assert [g["lr"] for g in opt.param_groups] == [5e-2, 1e-3]
    before = {k: v.detach().clone() for k, v in proj.items()}
    model.train()
    model(**batch()).loss.backward()
    opt.step()
    # Adam's first step moves every weight with a gradient by ~lr: the projector's by its own 1e-3
    step = (proj["linear_2.weight"].detach() - before["linear_2.weight"]).abs()
    assert 0.5e-3 < float(step.max()) < 1.5e-3
    # the method state carries the projector (an owned module); a fresh model + method gets it back bit for bit
    state = method.checkpoint_state()
    assert sorted(state) == sorted(f"module.projector.{k}" for k in proj)
    model2, _, method2 = build({"name": "lora", "projector_lr": 1e-3}, seed=1)
    method2.load_checkpoint_state({k: v.clone() for k, v in state.items()})
    for k, v in model2.model.multi_modal_projector.named_parameters():
        assert torch.equal(v, proj[k])
    # the model holds it once: the owned-module alias adds no parameter
    assert sum(p.numel() for p in model2.parameters() if p.requires_grad) == (
        sum(p.numel() for p in method2.extra_parameters()) + method2.adapter.num_parameters(trainable_only=True))
    with pytest.raises(ValueError, match="do not match"):
        method2.load_checkpoint_state({})
    with pytest.raises(ValueError, match="do not match"):
        build({"name": "lora"})[2].load_checkpoint_state(state)
    # a batch without images still touches the projector (zero loss term), as DDP needs
    text_only = {k: v for k, v in batch().items() if k != "pixel_values"}
    terms = method.loss_terms(text_only, None, None)
    assert set(terms) == {"projector_idle"} and terms["projector_idle"].item() == 0.0
    terms["projector_idle"].backward()
    assert all(p.grad is not None for p in method.extra_parameters())
    assert method.loss_terms(batch(), None, None) == {}


def test_lwf_teacher_and_ewc_fisher_cover_the_projector(tmp_path):
    model, _, lwf = build({"name": "lwf", "projector_lr": 1e-3})
    with torch.no_grad():
        for p in lwf.trainable_tensors().values():
            p.normal_(std=0.05)  # "task 1" left the LoRA and the projector somewhere
    inputs = {k: v for k, v in batch(5).items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits
    lwf.before_task(TaskInfo(1, "t1", 2))
    with torch.no_grad():
        for p in lwf.trainable_tensors().values():
            p.add_(0.05)  # task 2 trains both
        assert not torch.allclose(model(**inputs).logits, before)
    # the teacher is the whole pre-task model: LoRA *and* projector swapped back in
    params = dict(lwf.trainable_tensors())
    torch.testing.assert_close(lwf.teacher_logits(batch(5)), before, rtol=1e-5, atol=1e-6)
    # ... and swapped out again: the model trains its own Parameters afterwards (not the teacher's tensors)
    assert all(model.get_parameter(k) is p for k, p in params.items())
    assert model.dymoe_method.projector.linear_1.weight is model.model.multi_modal_projector.linear_1.weight
    assert any(k.startswith("model.multi_modal_projector.") for k in lwf.teacher)
    assert set(lwf.teacher) == set(lwf.trainable_tensors())
    state = lwf.checkpoint_state()
    assert any(k.startswith("module.projector.") for k in state) and any(k.startswith("teacher.") for k in state)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp_path / "state.safetensors"))
    lwf.load_checkpoint_state(state)

    class Trainer:
        def iter_batches(self, n, batch_size=None, seed=0):
            yield from (batch(s) for s in range(n))

    _, _, ewc = build({"name": "ewc", "projector_lr": 1e-3, "fisher_batches": 2})
    ewc.after_task(TaskInfo(0, "t0", 2), Trainer())
    assert {k for k in ewc.fisher if "multi_modal_projector" in k} == {
        f"model.multi_modal_projector.{n}" for n, _ in ewc.projector.module.named_parameters()}
    assert all(float(ewc.fisher[k].sum()) > 0 for k in ewc.fisher if "multi_modal_projector" in k)
    ewc.load_checkpoint_state(ewc.checkpoint_state())


def test_bf16_model_trains_an_fp32_projector():
    model, _, method = build({"name": "moelora", "projector_lr": 2e-5}, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in method.extra_parameters())
    out = model.model.multi_modal_projector(torch.randn(1, 16, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16  # the rest of the model keeps its dtype
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch().items() if k != "labels"}).logits
    assert torch.isfinite(logits).all()


def test_bad_projector_options():
    with pytest.raises(ConfigError, match="projector_lr"):
        build_method({"name": "lora", "projector_lr": 0.0})
    with pytest.raises(ConfigError, match="projector_lr"):
        build_method({"name": "olora", "projector_lr": -1.0})
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2))
    method = build_method({"name": "lora", "projector_lr": 1e-3})
    adapter = inject(lm, method.configure_adapter(AdapterConfig(dropout=0.0)))
    with pytest.raises(ConfigError, match="no vision-language projector"):
        method.setup(lm, adapter)
