"""Vision-tower sites on other model families: where each image row comes from a sample the hook can map, the
per-sample group mask reaches the right rows; where it cannot (LLaVA-NeXT's anyres patches), a clear error rather
than a silent misassignment.

The mapping (``context.image_rows``) is derived from ``pixel_values``' first dimension and the image placeholder
tokens, so it holds for processors that give one pixel row per image with a fixed number of placeholders
(LLaVA-1.5, PaliGemma, Gemma3, Idefics3 without image splitting). Families whose processors need torchvision are
not built here (the shared venv has none).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dymoe.data.coin import TrainSample
from dymoe.data.collate import VLMCollator
from dymoe.injection import AdapterConfig, inject
from dymoe.models.llava import load_backbone
from dymoe.models.tiny_families import make_tiny_family
from dymoe.models.vision_deps import MissingDependency, require_vision_deps


def _vision_model(family: str, tmp_path):
    try:
        require_vision_deps(family)
    except MissingDependency as err:
        pytest.skip(f"needs the vlm extra: {err}")
    model, processor = load_backbone(make_tiny_family(family, tmp_path / family, seed=0), dtype="float32")
    cfg = AdapterConfig(experts_per_group=2, expert_rank=2, top_k=2, alpha=4.0, dropout=0.0,
                        sites=[{"name": "vision", "scope": "vision", "targets": ["q_proj"]}])
    adapter = inject(model, cfg)
    adapter.add_group(0)
    adapter.fold()
    adapter.add_group(1)
    image = tmp_path / "wide.png"
    Image.new("RGB", (24, 16), (200, 40, 30)).save(image)
    samples = [TrainSample("t", None, [("Which is larger, 7 or 3?", "7")]),  # text only
               TrainSample("a", image, [("What is it?", "A box.")]),
               TrainSample("b", image, [("What colour?", "Red.")])]
    batch = {k: v for k, v in VLMCollator(processor, max_length=1024)(samples).items() if k != "labels"}
    return model, adapter, batch


@pytest.mark.parametrize("family", ["paligemma", "gemma3", "idefics3"])
def test_vision_rows_map_images_to_their_samples(family, tmp_path):
    model, adapter, batch = _vision_model(family, tmp_path)
    ctx = adapter.context
    events = []
    ctx.recording, ctx.observers = True, [events.append]
    ctx.group_mask = torch.tensor([[True, True], [True, False], [False, True]])  # sample 1: group 0, sample 2: 1
    with torch.no_grad():
        model(**batch)
    assert ctx.image_rows.tolist() == [1, 2]
    assert events and all(ev.layer.stream == "vision" for ev in events)
    for ev in events:
        allowed = torch.isfinite(ev.adjusted).reshape(2, -1, ev.adjusted.shape[-1])  # [images, tokens, E]
        groups = ev.layer.expert_group
        assert allowed[0][:, groups == 0].all() and not allowed[0][:, groups == 1].any()
        assert allowed[1][:, groups == 1].all() and not allowed[1][:, groups == 0].any()


def test_anyres_patches_without_an_image_map_are_a_clear_error(tmp_path):
    """LLaVA-NeXT feeds several crops per image to the tower: the hook cannot map them, so a per-sample input
    on the vision stream is refused with a message naming ``image_rows``; without one the forward runs."""
    model, adapter, batch = _vision_model("llava_next", tmp_path)
    with torch.no_grad():
        model(**batch)  # no per-sample input: nothing to map
        adapter.context.group_mask = torch.tensor([[True, True], [True, False], [False, True]])
        with pytest.raises(ValueError, match="image_rows"):
            model(**batch)
