"""Collation through a real (tiny, offline) LLaVA processor: prompts, labels, padding, images, truncation."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dymoe.data.coin import TestSample as CoinTestSample  # aliased: pytest would try to collect Test*
from dymoe.data.coin import TrainSample
from dymoe.data.collate import VLMCollator, build_generation_batch, build_prompt, split_meta
from dymoe.data.images import expand2square
from dymoe.errors import DataError

N_IMG_TOKENS = 16  # preset "test": (16 // 4) ** 2

# the llava-hf/llava-1.5-7b-hf template: answers end with " ", no "</s>"
HF_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    out = {}
    for name, size, color in [("wide", (20, 10), (255, 0, 0)), ("square", (16, 16), (0, 0, 255))]:
        out[name] = tmp_path / f"{name}.png"
        Image.new("RGB", size, color).save(out[name])
    return out


def test_build_prompt_llava_format(processor):
    assert build_prompt(processor, [("What is it?", None)], add_generation_prompt=True, has_image=True) == (
        "USER: <image>\nWhat is it? ASSISTANT:"
    )
    text = build_prompt(processor, [("Q1", "A1"), ("Q2", "A2")], add_generation_prompt=False, has_image=False)
    assert text == "USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"


def test_ids_match_the_processor_on_the_full_text(processor, images):
    sample = TrainSample("s", images["square"], [("What is it?", "cat"), ("Colour?", "blue")])
    collator = VLMCollator(processor, max_length=512)
    batch = collator([sample])
    full = build_prompt(processor, sample.turns, add_generation_prompt=False, has_image=True)
    ref = processor(text=[full], images=[Image.open(images["square"]).convert("RGB")], return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.allclose(batch["pixel_values"], ref["pixel_values"])
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == N_IMG_TOKENS
    answer = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(answer) == " cat</s> blue</s>"


def test_labels_match_the_assistant_mask_of_the_template(processor):
    # independent reference: the {% generation %} mask the chat template itself marks
    turns = [("Which is a mammal?\nA. frog\nB. whale", "B"), ("Why?", "It breathes air")]
    msgs = [m for u, a in turns for m in ({"role": "user", "content": [{"type": "text", "text": u}]},
                                           {"role": "assistant", "content": [{"type": "text", "text": a}]})]
    ref = processor.tokenizer.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=processor.chat_template
    )
    batch = VLMCollator(processor, max_length=512)([TrainSample("t", None, turns)])
    bos = processor.tokenizer.bos_token_id  # the tokenizer adds BOS; the chat template path does not
    assert batch["input_ids"][0].tolist() == [bos] + ref["input_ids"]
    mask = torch.tensor([0] + ref["assistant_masks"]).bool()
    expected = torch.where(mask, torch.tensor([bos] + ref["input_ids"]), torch.tensor(-100))
    # the template marks " B</s>" and " It breathes air</s>" (the space is merged into the first answer token)
    assert batch["labels"][0].tolist() == expected.tolist()
    assert "pixel_values" not in batch


def test_mixed_batch_right_padding_and_pixel_values(processor, images):
    samples = [
        TrainSample("a", images["wide"], [("Q?", "yes")]),
        TrainSample("b", None, [("A much longer question without any image at all?", "no")]),
        TrainSample("c", images["square"], [("Q?", "left")]),
    ]
    collator = VLMCollator(processor, max_length=512)
    batch = collator(samples)
    assert batch["pixel_values"].shape == (2, 3, 16, 16)  # [N_img, 3, H, W], only samples a and c
    lengths = batch["attention_mask"].sum(1).tolist()
    width = batch["input_ids"].shape[1]
    assert max(lengths) == width
    for b, n in enumerate(lengths):
        assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()  # right padding
        assert (batch["input_ids"][b, n:] == processor.tokenizer.pad_token_id).all()
        assert (batch["labels"][b, n:] == -100).all()
    assert collator.num_truncated == collator.num_dropped == 0


def test_pad_to_square_uses_the_mean_colour(processor, images):
    sample = TrainSample("a", images["wide"], [("Q?", "yes")])
    padded = VLMCollator(processor, max_length=512)([sample])["pixel_values"]
    plain = VLMCollator(processor, max_length=512, pad_to_square=False)([sample])["pixel_values"]
    bg = tuple(int(x * 255) for x in processor.image_processor.image_mean)
    manual = expand2square(Image.open(images["wide"]).convert("RGB"), bg)
    ref = processor.image_processor(manual, return_tensors="pt")["pixel_values"]
    assert torch.allclose(padded, ref)
    assert not torch.allclose(padded, plain)
    # the top rows are the mean colour, which normalises to ~0
    assert np.abs(padded[0, :, 0, :].numpy()).max() < 0.02


def test_truncation_keeps_the_image_and_counts(processor, images):
    sample = TrainSample("a", images["square"], [("Describe it. " * 10, "a long answer " * 10)])
    full = VLMCollator(processor, max_length=1024)([sample])["input_ids"].shape[1]
    collator = VLMCollator(processor, max_length=full - 5)
    batch = collator([sample])
    assert batch["input_ids"].shape == (1, full - 5)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == N_IMG_TOKENS
    assert collator.num_truncated == 1 and collator.num_dropped == 0

    tiny = VLMCollator(processor, max_length=N_IMG_TOKENS)  # BOS + "USER: " + 16 image tokens do not fit
    kept = tiny([sample, TrainSample("b", None, [("Q?", "yes")])])
    assert kept["input_ids"].shape[0] == 1 and "pixel_values" not in kept
    assert tiny.num_dropped == 1
    with pytest.raises(DataError, match="every sample of the batch was dropped"):
        tiny([sample])


def test_eos_is_appended_when_the_template_omits_it(processor):
    hf = copy.copy(processor)
    hf.chat_template = HF_LLAVA_TEMPLATE
    batch = VLMCollator(hf, max_length=512)([TrainSample("t", None, [("Q1", "A1"), ("Q2", "A2")])])
    ids = batch["input_ids"][0]
    assert processor.tokenizer.decode(ids) == "<s>USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != -100]) == " A1</s> A2</s>"


def test_generation_batch_left_padding(processor, images):
    samples = [
        CoinTestSample(1, images["wide"], "What is it?", {}),
        CoinTestSample(2, None, "A text-only question that is rather long?", {}),
    ]
    batch = build_generation_batch(processor, samples, max_length=512)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["pixel_values"].shape == (1, 3, 16, 16)
    suffix = processor.tokenizer(" ASSISTANT:", add_special_tokens=False)["input_ids"][-2:]
    for b in range(2):
        n = int(batch["attention_mask"][b].sum())
        assert not batch["attention_mask"][b, :-n].any()  # left padding
        assert batch["input_ids"][b, -2:].tolist() == suffix
    one = build_generation_batch(processor, samples[:1], max_length=512)["input_ids"][0]
    assert torch.equal(batch["input_ids"][0, -len(one):], one)


def test_generation_truncation_keeps_image_and_question_end(processor, images):
    sample = CoinTestSample(1, images["square"], "word " * 60 + "final question?", {})
    stats: dict[str, int] = {}
    batch = build_generation_batch(processor, [sample], max_length=40, stats=stats)
    ids = batch["input_ids"][0]
    assert ids.shape == (40,) and stats == {"num_truncated": 1}
    assert int((ids == processor.image_token_id).sum()) == N_IMG_TOKENS
    assert processor.tokenizer.decode(ids[-8:]).endswith("final question? ASSISTANT:")
    with pytest.raises(DataError, match="cannot hold the image tokens"):
        build_generation_batch(processor, [sample], max_length=10)


def test_batch_runs_through_the_tiny_llava(tiny_llava_dir, processor, images):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    batch = VLMCollator(processor, max_length=128)([
        TrainSample("a", images["wide"], [("Q?", "yes")]),
        TrainSample("b", None, [("Q?", "no")]),
    ])
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_undecodable_image_names_the_sample(processor, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="sample 'x7': image .*bad.jpg does not decode"):
        VLMCollator(processor, max_length=64)([TrainSample("x7", bad, [("Q?", "A")])])


def test_batches_carry_sample_indices_after_the_collators_drops(processor, images):
    """``sample_index`` names each kept row's sample; ``image_sample`` the row of each image; the model inputs are
    exactly those of a batch collated without indices."""
    text = TrainSample("t", None, [("Say hi", "hi")])
    img = TrainSample("i", images["square"], [("What is it?", "cat")])
    long_img = TrainSample("x", images["wide"], [("What is it?", "dog")])
    collator = VLMCollator(processor, max_length=512)
    plain = collator([text, img, long_img])
    batch = collator([text, img, long_img], indices=[7, 3, 11])
    inputs, meta = split_meta(batch)
    assert inputs.keys() == plain.keys() and all(torch.equal(inputs[k], plain[k]) for k in plain)
    assert meta["sample_index"].tolist() == [7, 3, 11]
    assert meta["image_sample"].tolist() == [1, 2]  # rows with an image, in pixel_values order
    assert inputs["pixel_values"].shape[0] == 2
    # a dropped sample (its image tokens exceed max_length) leaves the batch with its index
    tiny = VLMCollator(processor, max_length=N_IMG_TOKENS)  # BOS + "USER: " + 16 image tokens do not fit
    kept = tiny([img, text], indices=[9, 5])
    assert tiny.num_dropped == 1 and kept["sample_index"].tolist() == [5] and kept["image_sample"].tolist() == []
    assert split_meta(plain) == (plain, {})
    gen = build_generation_batch(processor, [CoinTestSample(1, images["square"], "Q?", {}),
                                             CoinTestSample(2, None, "Q2?", {})], max_length=512, indices=[4, 0])
    assert gen["sample_index"].tolist() == [4, 0] and gen["image_sample"].tolist() == [0]
