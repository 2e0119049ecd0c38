"""Parity per model family: batches carry every processor output, and injected experts with B = 0 change nothing.

For each of the 14 families of :mod:`dymoe.models.tiny_families` a tiny random model is built offline here. The
reference is the *unmodified* model's own forward on its processor's output for the full text (what transformers
users run); the candidate is the adapter-injected model (every expert's B = 0) on dymoe's collated batch. Equal
ids, equal per-token and image tensors and bit-equal logits for a one-sample batch catch every dropped or
mis-padded input (``image_grid_thw``, ``image_sizes``, ``aspect_ratio_ids``, ``token_type_ids``...). Batches
mixing an image sample and a text-only sample are compared row by row (padding changes kernel shapes, so up to
float round-off). Generation prompts get the same check, and ``generate`` runs on each family.

The families whose processor needs torchvision/num2words (the ``vlm`` extra) are skipped without them, unless
``DYMOE_REQUIRE_VLM=1`` (set by ``make test``), which turns a missing extra into a failure.
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from dymoe.data.coin import TestSample as CoinTestSample  # aliased: pytest would try to collect Test*
from dymoe.data.coin import TrainSample
from dymoe.data.collate import (
    IGNORE_INDEX,
    VLMCollator,
    build_generation_batch,
    build_prompt,
    generation_prompt,
)
from dymoe.eval.generate import generate_predictions
from dymoe.injection.inject import AdapterConfig, inject
from dymoe.models.families import TOKEN_KEYS, is_text_only, tokenizer_of
from dymoe.models.llava import load_backbone
from dymoe.models.tiny_families import FAMILIES, make_tiny_family
from dymoe.models.vision_deps import (
    NEEDS_NUM2WORDS,
    NEEDS_TORCHVISION,
    MissingDependency,
    require_vision_deps,
)

CAUSAL = ("llama", "qwen2")


def _skip_without_extra(family: str) -> None:
    try:
        require_vision_deps(family)
    except MissingDependency as err:
        if os.environ.get("DYMOE_REQUIRE_VLM") == "1":
            raise
        pytest.skip(f"needs the vlm extra: {err}")


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = make_tiny_family(family, root / family, seed=0)
        return built[family]

    return get


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.new("RGB", (24, 16), (200, 40, 30)).save(path)  # not square: pad-to-square runs too
    return path


def _load(family, family_dirs):
    _skip_without_extra(family)
    model, processor = load_backbone(family_dirs(family), dtype="float32")
    return model, processor


def _reference(processor, text: str, image, sample: TrainSample | None = None) -> dict:
    """The processor's own output for ``text`` (and its image), as a transformers user would call it."""
    tok = tokenizer_of(processor)
    special = not (tok.bos_token and text.startswith(tok.bos_token))
    if is_text_only(processor):
        return dict(tok([text], add_special_tokens=special, return_tensors="pt"))
    if type(processor).__name__ == "PaliGemmaProcessor":
        question, answer = sample.turns[0] if sample is not None else (text, None)
        suffix = [answer] if answer is not None else None
        if image is None:  # its processor refuses text-only input: the prefix/suffix layout by hand
            ids = [tok.bos_token_id] + tok(question + "\n", add_special_tokens=False)["input_ids"]
            n_prefix = len(ids)
            if answer is not None:
                ids += tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                   "token_type_ids": torch.tensor([[0] * n_prefix + [1] * (len(ids) - n_prefix)])}
            if answer is not None:
                out["labels"] = out["input_ids"].masked_fill(out["token_type_ids"] == 0, IGNORE_INDEX)
            return out
        return dict(processor(text=[processor.image_token + question], images=[image], suffix=suffix,
                              return_tensors="pt"))
    return dict(processor(text=[text], images=[image] if image is not None else None, add_special_tokens=special,
                          return_tensors="pt"))


def _image(processor, path):
    from dymoe.data.images import background_from_mean, expand2square, load_image

    return expand2square(load_image(path), background_from_mean(processor.image_processor.image_mean))


def _inject_zero_experts(model):
    adapter = inject(model, AdapterConfig(experts_per_group=2, expert_rank=2, top_k=2, alpha=4.0, dropout=0.0))
    adapter.add_group(0)
    bs = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert bs and all(torch.count_nonzero(b) == 0 for b in bs)
    return adapter


def _logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits  # [B, T, V]


def _samples(family: str, image_path):
    img = None if family in CAUSAL else image_path
    conversation = [("What is in the picture?", "A red box.")]
    if family != "paligemma":  # PaliGemma's own processor has no multi-turn format to compare with
        conversation.append(("And its colour?", "Red."))
    return [TrainSample("img", img, conversation), TrainSample("txt", None, [("Which is larger, 7 or 3?", "7")])]


@pytest.mark.parametrize("family", FAMILIES)
def test_training_batch_parity(family, family_dirs, image_path):
    model, processor = _load(family, family_dirs)
    samples = _samples(family, image_path)
    refs = []
    for s in samples:
        image = _image(processor, s.image) if s.image is not None else None
        text = (s.turns[0][0] if family == "paligemma"
                else build_prompt(processor, s.turns, add_generation_prompt=False, has_image=image is not None))
        refs.append(_reference(processor, text, image, s))
    ref_logits = [_logits(model, {k: v for k, v in r.items() if k != "labels"}) for r in refs]
    _inject_zero_experts(model)
    collator = VLMCollator(processor, max_length=1024)

    for s, ref, want in zip(samples, refs, ref_logits):
        batch = collator([s])
        assert batch["input_ids"].tolist() == ref["input_ids"].tolist(), family
        for key, value in ref.items():  # every processor output reaches the model, unchanged
            if key == "labels" and family != "paligemma":
                continue
            assert key in batch, (family, key)
            assert torch.equal(batch[key], value.to(batch[key].dtype)), (family, key)
        labels = batch["labels"][0]
        answers = [a for _, a in s.turns]
        decoded = tokenizer_of(processor).decode(labels[labels != IGNORE_INDEX])
        assert all(a in decoded for a in answers) and s.turns[0][0] not in decoded, (family, decoded)
        got = _logits(model, {k: v for k, v in batch.items() if k != "labels"})
        assert torch.equal(got, want), family  # B = 0: bit-identical to the unmodified model

    mixed = collator(samples)  # an image sample and a text-only one in one batch (right padding)
    got = _logits(model, {k: v for k, v in mixed.items() if k != "labels"})
    for b, want in enumerate(ref_logits):
        n = want.shape[1]
        assert mixed["attention_mask"][b].sum() == n
        torch.testing.assert_close(got[b, :n], want[0], atol=2e-5, rtol=1e-4, msg=f"{family} row {b}")


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_batch_parity_and_generate(family, family_dirs, image_path):
    model, processor = _load(family, family_dirs)
    img = None if family in CAUSAL else image_path
    questions = [CoinTestSample(1, img, "What is in the picture?", {}), CoinTestSample(2, None, "Is 7 odd?", {})]
    refs = []
    for q in questions:
        image = _image(processor, q.image) if q.image is not None else None
        ref = _reference(processor, generation_prompt(processor, q.prompt, image is not None), image)
        refs.append({k: v for k, v in ref.items() if k != "labels"})  # PaliGemma's processor adds all -100 labels
    ref_logits = [_logits(model, r) for r in refs]
    _inject_zero_experts(model)
    for q, ref, want in zip(questions, refs, ref_logits):
        batch = build_generation_batch(processor, [q], max_length=1024)
        assert set(ref) <= set(batch), family
        for key, value in ref.items():
            assert torch.equal(batch[key], value.to(batch[key].dtype)), (family, key)
        assert torch.equal(_logits(model, batch), want), family
    mixed = build_generation_batch(processor, questions, max_length=1024)  # left padding
    got = _logits(model, mixed)
    for b, want in enumerate(ref_logits):
        n = want.shape[1]
        torch.testing.assert_close(got[b, -n:], want[0], atol=2e-5, rtol=1e-4, msg=f"{family} row {b}")
    rows = generate_predictions(model, processor, questions, batch_size=2, max_new_tokens=3)
    assert [r["question_id"] for r in rows] == [1, 2] and all(isinstance(r["text"], str) for r in rows)


def test_per_token_keys_have_pad_values():
    assert TOKEN_KEYS["attention_mask"][0] == 0 and TOKEN_KEYS["cross_attention_mask"][1] == "last"


@pytest.mark.parametrize("family", sorted(NEEDS_TORCHVISION | NEEDS_NUM2WORDS))
def test_missing_vlm_extra_is_a_clear_error(family, monkeypatch):
    import importlib.util

    import dymoe.models.vision_deps as deps

    real = importlib.util.find_spec
    monkeypatch.setattr(deps, "prepare_torchvision", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "num2words" else real(name, *a))
    with pytest.raises(MissingDependency, match=r'pip install -e "\.\[vlm\]"'):
        require_vision_deps(family)
