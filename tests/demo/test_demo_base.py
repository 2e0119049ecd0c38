"""Demo base (cache key, manifest verification and rebuild, caption content) and demo assembly (methods, config
layering, comparison table, the ``dymoe demo`` CLI with the runner replaced by fake run directories)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dymoe.cli.main import main
from dymoe.data.minicoin.tasks import TASK_NAMES, TASKS
from dymoe.data.minicoin.tasks.base import GROUNDING_INSTRUCTION, SHORT_ANSWER, SQA_INSTRUCTION
from dymoe.data.minicoin.world import SceneObject
from dymoe.demo import plan
from dymoe.demo.base import DemoBaseConfig, build_demo_base, demo_base_dir, verify_demo_base
from dymoe.demo.captions import CAPTION_PROMPTS, _focus_scene, caption_samples, describe_scene
from dymoe.errors import ConfigError
from dymoe.eval.metrics import save_matrix

# a base that builds in a couple of seconds: the "test" preset, 3 steps on 8 captions
TINY = dict(preset="test", batch_size=2, num_scenes=8, corpus_per_task=4, max_length=96, warmup_steps=1, held_out=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices gain nothing from a second thread, and lose a lot when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- cache key


def test_cache_key_is_stable_and_changes_with_every_field():
    base = DemoBaseConfig()
    assert DemoBaseConfig().key == base.key and len(base.key) == 16
    changed = [DemoBaseConfig(seed=1), DemoBaseConfig(steps=base.steps + 1), DemoBaseConfig(lr=base.lr / 2),
               DemoBaseConfig(batch_size=base.batch_size * 2), DemoBaseConfig(num_scenes=base.num_scenes + 1),
               DemoBaseConfig(preset="small"), DemoBaseConfig(max_length=base.max_length + 1)]
    keys = {c.key for c in changed}
    assert base.key not in keys and len(keys) == len(changed)


def test_cache_dir_is_keyed_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DYMOE_CACHE", str(tmp_path))
    cfg = DemoBaseConfig(steps=7)
    assert demo_base_dir(cfg) == tmp_path / "demo-base" / f"demo-{cfg.key}"
    assert demo_base_dir(DemoBaseConfig(steps=8)) != demo_base_dir(cfg)


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown options.*'epochs'"):
        build_demo_base(tmp_path / "b", epochs=3)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        DemoBaseConfig(steps=0)


# ----------------------------------------------------------------------------------------------- build + verify


@pytest.fixture(scope="module")
def built_base(tmp_path_factory):
    return build_demo_base(tmp_path_factory.mktemp("demo") / "base", steps=3, progress=False, **TINY)


def test_build_writes_a_loadable_base_with_a_manifest(built_base):
    from dymoe.models.llava import load_backbone

    manifest = json.loads((built_base / "MANIFEST.json").read_text())
    assert manifest["config"] == DemoBaseConfig(steps=3, **TINY).to_dict()
    assert manifest["key"] == DemoBaseConfig(steps=3, **TINY).key
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["training"]["first_loss"] > 0
    assert verify_demo_base(built_base) == []
    model, processor = load_backbone(built_base)
    # the tokenizer was trained on mini-CoIN's texts: they take fewer tokens than with the default corpus alone
    from dymoe.models.tiny import build_tokenizer

    generic = build_tokenizer(None, vocab_size=512)
    text = "How many striped purple triangles are there? " + GROUNDING_INSTRUCTION
    ours = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ours) < len(generic(text, add_special_tokens=False)["input_ids"])
    assert processor.tokenizer.decode(ours) == text
    assert model.config.vision_config.image_size == 16  # the "test" preset


def test_verified_base_is_reused(built_base, monkeypatch):
    import dymoe.demo.base as base_mod

    monkeypatch.setattr(base_mod, "_build", lambda *a, **k: pytest.fail("rebuilt an intact base"))
    assert build_demo_base(built_base, steps=3, progress=False, **TINY) == built_base


def test_corrupted_base_is_detected_and_rebuilt(built_base, tmp_path, capsys):
    import shutil

    out = tmp_path / "base"
    shutil.copytree(built_base, out)
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    blob = bytearray(good)
    blob[-10] ^= 0xFF  # flip bits inside the tensor data
    weights.write_bytes(bytes(blob))
    (out / "stray.txt").write_text("x")
    problems = verify_demo_base(out)
    assert "model.safetensors: sha256 mismatch (file changed or corrupted)" in problems
    assert "stray.txt: not listed in MANIFEST.json" in problems

    assert build_demo_base(out, steps=3, progress=False, **TINY) == out.resolve()
    assert "failed verification" in capsys.readouterr().err
    assert verify_demo_base(out) == []
    assert weights.read_bytes() == good  # the build is deterministic: same config, same weights
    assert not (out / "stray.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temporary folders left behind


def test_base_of_another_config_is_rebuilt(built_base):
    problems = verify_demo_base(built_base, DemoBaseConfig(steps=4, **TINY))
    assert len(problems) == 1 and "built with another config" in problems[0]


def test_shipped_base_is_the_default_config():
    """The shipped base must be rebuilt (``dymoe prepare-demo --force --export ...``) whenever the default
    config or the recipe version changes; otherwise every fresh clone would pretrain on first use."""
    from dymoe.demo.base import PACKAGED

    assert verify_demo_base(PACKAGED, DemoBaseConfig()) == []


def test_empty_cache_installs_the_shipped_base(built_base, tmp_path, monkeypatch, capsys):
    import dymoe.demo.base as base_mod

    monkeypatch.setenv("DYMOE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(base_mod, "PACKAGED", built_base)
    monkeypatch.setattr(base_mod, "_build", lambda *a, **k: pytest.fail("pretrained although a base is shipped"))
    out = build_demo_base(steps=3, progress=False, **TINY)
    assert out == demo_base_dir(DemoBaseConfig(steps=3, **TINY))
    assert verify_demo_base(out, DemoBaseConfig(steps=3, **TINY)) == []
    assert (out / "model.safetensors").read_bytes() == (built_base / "model.safetensors").read_bytes()
    assert "shipped with dymoe" in capsys.readouterr().err
    # a shipped base of another config is ignored: that config is pretrained
    built = []
    monkeypatch.setattr(base_mod, "_build", lambda out, config, progress: built.append(config) or out)
    build_demo_base(steps=4, progress=False, **TINY)
    assert built == [DemoBaseConfig(steps=4, **TINY)]
    # --force never takes the shipped one
    build_demo_base(steps=3, progress=False, force=True, **TINY)
    assert built[-1] == DemoBaseConfig(steps=3, **TINY)


def test_missing_manifest(tmp_path):
    assert verify_demo_base(tmp_path) == [f"{tmp_path / 'MANIFEST.json'}: missing"]


# ----------------------------------------------------------------------------------------------- captions


def test_describe_scene_by_hand():
    size = (64, 64)
    objs = [SceneObject("circle", "red", (2, 2, 20, 20), "striped"), SceneObject("cross", "blue", (40, 36, 60, 60)),
            SceneObject("circle", "white", (36, 4, 56, 24))]
    assert describe_scene(objs, size, "grey", 0) == (
        "Three objects on a grey background: a striped red circle at the top left, a blue cross at the bottom right, "
        "a white circle at the top right."
    )
    assert describe_scene(objs, size, "slate", 1) == (
        "A slate picture with three objects. The top left circle is red and striped. The bottom right cross is "
        "blue. The top right circle is white."
    )
    assert describe_scene(objs, size, "brown", 2) == (
        "There are two circles and one cross here. Colours: red, blue, white. The background is brown."
    )
    centred = [SceneObject("diamond", "orange", (24, 26, 40, 40))]
    assert describe_scene(centred, size, "grey", 0) == "One object on a grey background: an orange diamond in the middle."
    with pytest.raises(ValueError):
        describe_scene(objs, size, "grey", 3)


def test_captions_are_deterministic_and_varied():
    a, b = caption_samples(60, 0), caption_samples(60, 0)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert np.array_equal(np.asarray(a[5].image), np.asarray(b[5].image))
    assert [s.caption for s in caption_samples(60, 1)] != [s.caption for s in a]
    assert {s.kind for s in a} == {"scene", "sign", "cover", "text"}
    assert all((s.image is None) == (s.kind == "text") for s in a)
    whole = [s for s in a if s.prompt in CAPTION_PROMPTS]
    assert 12 < len(whole) < 40  # about (1 - TEXT_RATE) * (1 - FOCUS_RATE) = 5/12 of the samples
    assert len({s.caption for s in whole}) == len(whole)
    assert len({s.prompt for s in a}) > 6


def test_focused_descriptions_by_hand():
    size = (64, 64)
    objs = [SceneObject("circle", "red", (2, 2, 20, 20), "striped"), SceneObject("cross", "blue", (40, 36, 60, 60)),
            SceneObject("circle", "white", (36, 4, 56, 24))]
    assert _focus_scene(objs, size) == [
        ("Describe the cross.", "The cross is blue, at the bottom right."),  # the circles are two: not asked
        ("Describe the top left of the picture.", "At the top left there is a striped red circle."),
        ("Describe the top right of the picture.", "At the top right there is a white circle."),
        ("Describe the bottom left of the picture.", "There is nothing at the bottom left."),
        ("Describe the bottom right of the picture.", "At the bottom right there is a blue cross."),
        ("Describe how many things are in the picture.", "There are three objects."),
    ]


def test_caption_corpus_has_none_of_the_tasks_instructions_or_questions():
    samples = caption_samples(600, 0)
    texts = [f"{s.prompt}\n{s.caption}" for s in samples]
    # the text-only samples know the word "unanswerable" (as any language model does); no image sample uses it
    assert any("unanswerable" in t for s, t in zip(samples, texts) if s.image is None)
    assert not any("unanswerable" in t for s, t in zip(samples, texts) if s.image is not None)
    samples, texts = zip(*[(s, t) for s, t in zip(samples, texts) if "unanswerable" not in t])
    # every question/prompt line the eight task generators produce (train and test), plus the instructions
    forbidden = {SHORT_ANSWER, SQA_INSTRUCTION, GROUNDING_INSTRUCTION, "Options:", "Context:", "unanswerable"}
    for k, name in enumerate(TASK_NAMES):
        rng = np.random.default_rng([0, k])
        for split in ("train", "test"):
            for _ in range(40):
                for prompt, _answer in TASKS.get(name)(rng, split).turns:
                    forbidden.update(line for line in prompt.split("\n") if len(line) > 12)
    assert len(forbidden) > 40
    hits = [(f, t) for f in forbidden for t in texts if f in t]
    assert hits == []
    # no grounding boxes either: images never come with numbers in brackets, text lists have 2-3 numbers
    assert not any("[0." in t for s, t in zip(samples, texts) if s.image is not None)
    assert not any(s.caption.count(",") >= 3 for s in samples if "[" in s.caption)


# ----------------------------------------------------------------------------------------------- demo assembly


def test_select_methods():
    registered = ["lora", "incmoelora", "ewc"]
    assert plan.select_methods(None, registered) == (["lora", "incmoelora"], ["dymoe"])
    assert plan.select_methods(None, [*registered, "dymoe"]) == (["lora", "incmoelora", "dymoe"], [])
    assert plan.select_methods(["dymoe", "lora"], ["lora", "dymoe"]) == (["lora", "dymoe"], [])
    with pytest.raises(ConfigError, match="'dymoe' is not a registered method"):
        plan.select_methods(["dymoe"], registered)
    with pytest.raises(ConfigError, match="unknown demo method 'ewc'"):
        plan.select_methods(["ewc"], registered)
    with pytest.raises(ConfigError, match="listed twice"):
        plan.select_methods(["lora", "lora"], registered)


@pytest.mark.parametrize("method", plan.DEMO_METHODS)
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_demo_configs_parse(method, quick):
    cfg = plan.demo_config(method, quick=quick, seed=3)
    assert cfg.method_name == method
    assert cfg.backbone.path == "demo:base"
    assert cfg.training.seed == 3
    assert cfg.label == {"lora": "LoRA", "incmoelora": "IncMoELoRA", "dymoe": "LLaVA-DyMoE"}[method]
    assert cfg.benchmark.minicoin_scale == "small" and cfg.benchmark.max_eval_samples is None
    if quick:
        assert cfg.benchmark.order == ["ScienceQA", "TextVQA", "ImageNet", "GQA"] and cfg.training.epochs == 1
    else:
        assert cfg.benchmark.order == "origin" and cfg.training.epochs == 5


def test_demo_routing_temperature_is_the_papers_matched_to_the_base_width():
    """The papers' T = 0.01 at LLaVA-7B's width 4096; cosine scores against random router rows spread as 1/sqrt(d),
    so at the shipped base's width the same softness needs T = 0.01 * sqrt(4096 / d)."""
    import math

    from dymoe.demo.base import PACKAGED

    d = json.loads((PACKAGED / "config.json").read_text())["text_config"]["hidden_size"]
    assert d == 128
    for method in ("incmoelora", "dymoe"):
        assert plan.demo_config(method).adapter.temperature == pytest.approx(0.01 * math.sqrt(4096 / d), abs=5e-4)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_config_layering(tmp_path):
    _write(tmp_path / "minicoin.yaml", "backbone: {path: tiny:test}\nmethod: {name: lora}\n"
           "training: {lr: 0.01, batch_size: 8}\nbenchmark: {order: origin, max_eval_samples: 10}\n")
    _write(tmp_path / "incmoelora.yaml", "label: Inc\nmethod: {name: incmoelora}\ntraining: {lr: 0.002}\n")
    _write(tmp_path / "quick.yaml", "benchmark: {order: [GQA, VizWiz]}\ntraining: {epochs: 0.5}\n")
    assert plan.demo_overrides("incmoelora", config_dir=tmp_path, seed=4) == [
        'label="Inc"', 'method.name="incmoelora"', "training.lr=0.002", "training.seed=4"]
    cfg = plan.demo_config("incmoelora", quick=True, config_dir=tmp_path)
    assert (cfg.training.lr, cfg.training.batch_size, cfg.training.epochs) == (0.002, 8, 0.5)  # merged key by key
    assert cfg.benchmark.order == ["GQA", "VizWiz"] and cfg.benchmark.max_eval_samples == 10
    assert cfg.label == "Inc" and cfg.method == {"name": "incmoelora"}

    _write(tmp_path / "lora.yaml", "method: {name: incmoelora}\n")
    with pytest.raises(ConfigError, match="method.name is 'incmoelora', expected 'lora'"):
        plan.demo_overrides("lora", config_dir=tmp_path)
    with pytest.raises(ConfigError, match="dymoe.yaml does not exist"):
        plan.demo_overrides("dymoe", config_dir=tmp_path)
    with pytest.raises(ConfigError, match="--seed"):
        plan.demo_overrides("incmoelora", config_dir=tmp_path, seed=-1)


TASKS3 = ["ScienceQA", "TextVQA", "ImageNet"]
# two fake runs; final rows, MFN (mean of the last row), MAA (mean of the row means), BWT by hand
FAKE = {
    "lora": ("LoRA", [[80.0], [40.0, 90.0], [20.0, 30.0, 70.0]]),
    "dymoe": ("LLaVA-DyMoE", [[80.0], [70.0, 85.0], [60.0, 75.0, 65.0]]),
}
# LoRA: MFN = 40.0, MAA = (80 + 65 + 40) / 3 = 61.67, BWT = ((20 - 80) + (30 - 90)) / 2 = -60.0
# DyMoE: MFN = 66.67, MAA = (80 + 77.5 + 66.67) / 3 = 74.72, BWT = ((60 - 80) + (75 - 85)) / 2 = -15.0


def _fake_run(run_dir: Path, label: str, matrix: list[list[float]]) -> None:
    save_matrix(run_dir / "matrix.json", TASKS3, matrix)
    (run_dir / "metrics.json").write_text(json.dumps({"method": run_dir.name, "label": label}))


def test_comparison_table_from_fake_runs(tmp_path):
    for method, (label, matrix) in FAKE.items():
        _fake_run(tmp_path / method, label, matrix)
    md = plan.comparison_table([tmp_path / "lora", tmp_path / "dymoe"], tmp_path)
    lines = md.splitlines()
    assert lines[0] == "| Method | n | ScienceQA | TextVQA | ImageNet | MFN | MAA | BWT |"
    assert lines[2] == "| LoRA | 1 | 20.00 | 30.00 | 70.00 | 40.00 | 61.67 | -60.00 |"
    assert lines[3] == "| LLaVA-DyMoE | 1 | 60.00 | 75.00 | 65.00 | 66.67 | 74.72 | -15.00 |"
    assert (tmp_path / "comparison.md").read_text() == md
    csv_lines = (tmp_path / "comparison.csv").read_text().splitlines()
    assert csv_lines[1].startswith("LoRA,1,measured,20.0000,,30.0000,,70.0000,,40.0000,,61.6667,,-60.0000,")


def test_demo_cli_runs_each_method_then_prints_the_table(tmp_path, monkeypatch, capsys):
    import dymoe.runner.continual as continual
    import dymoe.runner.resources as resources

    calls = []

    def fake_run(cfg, output):
        calls.append((cfg.method_name, cfg.benchmark.minicoin_scale, cfg.training.seed, Path(output)))
        label, matrix = FAKE["dymoe" if cfg.method_name == "dymoe" else "lora"]
        _fake_run(Path(output), cfg.display_label, matrix)
        return {}

    monkeypatch.setattr(continual, "run", fake_run)
    monkeypatch.setattr(resources, "resolve_backbone_path", lambda path: calls.append(("base", path)) or "/nowhere")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out), "--methods", "lora,dymoe", "--seed", "2"]) == 0
    assert calls == [("base", "demo:base"), ("lora", "small", 2, out / "lora"), ("dymoe", "small", 2, out / "dymoe")]
    assert main(["demo", "--quick", "--output", str(out), "--methods", "lora"]) == 0  # seed 0 by default
    assert calls[-1] == ("lora", "small", 0, out / "lora")
    printed = capsys.readouterr().out
    assert "| LoRA | 1 | 20.00 | 30.00 | 70.00 | 40.00 | 61.67 | -60.00 |" in printed
    assert "| LLaVA-DyMoE | 1 | 60.00 | 75.00 | 65.00 | 66.67 | 74.72 | -15.00 |" in printed
    assert (out / "comparison.md").is_file() and (out / "comparison.csv").is_file()


def test_demo_cli_bad_method_exits_2(capsys):
    assert main(["demo", "--methods", "lora,sgd"]) == 2
    assert "error: --methods: unknown demo method 'sgd'" in capsys.readouterr().err
