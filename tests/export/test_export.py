"""Issue 22: adapters that leave dymoe. PEFT round trip (same logits as dymoe to fp32 tolerance), merged models,
the token-routed refusal, the Hub folder and its offline --push message."""

import json
from pathlib import Path

import pytest
import torch

from dymoe.cli.main import main
from dymoe.config import dump_config, load_config
from dymoe.errors import OutputError
from dymoe.export import export_run
from dymoe.export.lora import NotALoRA
from dymoe.models.llava import load_backbone
from dymoe.runner.trained import TrainedRun

peft = pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _inputs(vocab: int = 500):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits.float()


def _dymoe_logits(trained: TrainedRun, inputs):
    from dymoe.runner.trained import eval_routing

    with eval_routing(trained.method, trained.adapter) as hook:
        hook(inputs)
        return _logits(trained.model, inputs)


@pytest.mark.parametrize("after", [1, 2])
def test_peft_export_gives_dymoe_logits(inclora_smoke_run, tmp_path, after):
    run_dir, _, cache = inclora_smoke_run
    out = export_run(run_dir, tmp_path / "peft", fmt="peft", after_task=after)
    trained = TrainedRun(run_dir, after_task=after, device="cpu")
    cfg = json.loads((out / "adapter_config.json").read_text())
    rank = trained.adapter.modules[next(iter(trained.adapter.modules))].bank()[0].shape[0]
    assert cfg["peft_type"] == "LORA" and cfg["r"] == rank and rank == after * 8  # IncLoRA: one rank-8 LoRA per task
    assert sorted(cfg["target_modules"]) == sorted(trained.adapter.modules)
    assert cfg["lora_alpha"] == 16 * after  # s = alpha / r per task, PEFT scales by lora_alpha / R
    inputs = _inputs()
    expected = _dymoe_logits(trained, inputs)
    base, _ = load_backbone(trained.backbone, dtype="float32")
    plain = _logits(base, inputs)
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    got = _logits(model, inputs)
    assert (plain - expected).abs().max() > 1e-4  # the adapter changes the output: the comparison means something
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    manifest = json.loads((out / "dymoe_export.json").read_text())
    assert manifest["after_task"] == after and manifest["adapter_kind"] == "lora"


def test_merged_plain_lora_is_a_transformers_model(inclora_smoke_run, tmp_path):
    run_dir, _, _ = inclora_smoke_run
    out = export_run(run_dir, tmp_path / "merged", fmt="merged")
    trained = TrainedRun(run_dir, device="cpu")
    inputs = _inputs()
    from transformers import LlavaForConditionalGeneration

    merged = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, inputs), _dymoe_logits(trained, inputs), rtol=1e-4, atol=1e-4)


def test_hub_folder_and_offline_push(inclora_smoke_run, tmp_path, capsys, monkeypatch):
    run_dir, _, _ = inclora_smoke_run
    out = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["export", str(run_dir), "--format", "hub", "--output", str(out), "--push", "me/dymoe-test"])
    assert code == 2
    err = capsys.readouterr().err
    assert "needs a network" in err and str(out) in err and "huggingface-cli upload" in err
    for name in ("adapter_config.json", "adapter_model.safetensors", "protocol.json", "matrix.json", "metrics.json",
                 "format_forgetting.json", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "continual-learning" in card
    matrix = json.loads((out / "matrix.json").read_text())
    assert "## Accuracy matrix (%)" in card and f"{matrix['accuracy'][1][1]:.2f}" in card
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.library_name == "peft"  # the Hub's parser reads the header
    # an existing folder is not overwritten silently
    assert main(["export", str(run_dir), "--format", "hub", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- token-routed


@pytest.fixture
def incmoelora_run(tiny_llava_dir, tmp_path):
    """A one-task IncMoELoRA run directory made by hand (random experts, B ≠ 0): what TrainedRun reads."""
    from dymoe.injection.inject import inject
    from dymoe.injection.state import save_adapter
    from dymoe.methods import build_method
    from dymoe.methods.base import TaskInfo

    cfg = load_config(SMOKE, ["method.name=incmoelora", f"backbone.path={tiny_llava_dir}", "trackers=[]",
                              "benchmark.order=[ScienceQA]"])
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    (run / "env.json").write_text(json.dumps({"tasks": ["ScienceQA"]}))
    model, _ = load_backbone(tiny_llava_dir, dtype="float32")
    method = build_method(cfg.method)
    adapter = inject(model, method.configure_adapter(cfg.adapter))
    method.setup(model, adapter)
    method.before_task(TaskInfo(index=0, name="ScienceQA", num_tasks=1))
    torch.manual_seed(3)
    for m in adapter.modules.values():
        m.lora_B.data.normal_(0, 0.05)
    method.after_task(TaskInfo(index=0, name="ScienceQA", num_tasks=1))
    save_adapter(adapter, run / "checkpoints" / "task_1_ScienceQA", metadata={},
                 method_state=method.checkpoint_state())
    return run


def test_token_routed_methods_get_a_clear_message(incmoelora_run, tmp_path, capsys):
    with pytest.raises(NotALoRA, match="token-routed mixture"):
        export_run(incmoelora_run, tmp_path / "x", fmt="peft")
    assert not (tmp_path / "x").exists()
    assert main(["export", str(incmoelora_run), "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "no LoRA server" in err and "--format merged" in err


def test_merged_token_routed_keeps_dymoe_modules(incmoelora_run, tmp_path):
    from dymoe.export.merged import load_merged

    out = export_run(incmoelora_run, tmp_path / "merged", fmt="merged")
    assert (out / "model" / "config.json").is_file() and (out / "dymoe" / "checkpoints" / "task_1_ScienceQA").is_dir()
    inputs = _inputs()
    expected = _dymoe_logits(TrainedRun(incmoelora_run, device="cpu"), inputs)
    loaded = load_merged(out, device="cpu")
    assert Path(loaded.backbone) == out / "model"
    torch.testing.assert_close(_dymoe_logits(loaded, inputs), expected, rtol=0, atol=0)


def test_export_refuses_an_output_inside_the_run(incmoelora_run):
    from dymoe.errors import DymoeError

    with pytest.raises(DymoeError, match="inside the run directory"):
        export_run(incmoelora_run, incmoelora_run / "out", fmt="merged")
    with pytest.raises(OutputError, match="already exists"):
        export_run(incmoelora_run, incmoelora_run.parent, fmt="merged")


# ---------------------------------------------------------------------------------------------- every LoRA method


@pytest.mark.parametrize("name", ["lora", "ewc", "lwf", "inclora", "olora"])
def test_every_plain_lora_method_round_trips_through_peft(name, tiny_llava_dir, tmp_path):
    """In memory (no training run): random B's in every LoRA of the method's adapter, two tasks for the methods
    that add a LoRA per task; the PEFT adapter gives the same logits."""
    from dymoe.export.lora import plain_lora_kind, write_peft
    from dymoe.injection.inject import AdapterConfig, inject
    from dymoe.methods import build_method
    from dymoe.methods.base import TaskInfo

    model, _ = load_backbone(tiny_llava_dir, dtype="float32")
    method = build_method({"name": name})
    adapter = inject(model, method.configure_adapter(AdapterConfig(experts_per_group=2, expert_rank=2, alpha=8.0,
                                                                   dropout=0.0)))
    method.setup(model, adapter)
    torch.manual_seed(5)
    tasks = 2 if name in ("inclora", "olora") else 1
    for t in range(tasks):
        method.before_task(TaskInfo(index=t, name=f"T{t}", num_tasks=tasks))
        for m in adapter.modules.values():
            m.lora_B.data.normal_(0, 0.05)
        if tasks > 1:
            method.after_task(TaskInfo(index=t, name=f"T{t}", num_tasks=tasks))  # IncLoRA / O-LoRA fold
    assert plain_lora_kind(method, adapter) == "lora"
    model.eval()
    inputs = _inputs()
    expected = _logits(model, inputs)
    out = write_peft(adapter, tmp_path / "peft", base_model=str(tiny_llava_dir))
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4 * tasks
    base, _ = load_backbone(tiny_llava_dir, dtype="float32")
    got = _logits(peft.PeftModel.from_pretrained(base, str(out)).eval(), inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["moelora", "incmoelora", "dymoe"])
def test_mixtures_are_token_routed(name, tiny_llava_dir):
    from dymoe.export.lora import plain_lora_kind
    from dymoe.injection.inject import AdapterConfig, inject
    from dymoe.methods import build_method

    model, _ = load_backbone(tiny_llava_dir, dtype="float32")
    method = build_method({"name": name})
    adapter = inject(model, method.configure_adapter(AdapterConfig(experts_per_group=4, expert_rank=4)))
    method.setup(model, adapter)
    assert plain_lora_kind(method, adapter) == "token-routed"
