"""Tiny Hugging Face models built in memory for the injection tests (``tiny`` fixture)."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
IMAGE_TOKEN = 5
PATCHES = 16  # 8x8 image, 2x2 patches


def llava(seed=0):
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        text_config={"model_type": "llama", **TEXT, "pad_token_id": 1},
        vision_config={"image_size": 8, "patch_size": 2, "num_channels": 3, "hidden_size": 16, "projection_dim": 16,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24},
        image_token_index=IMAGE_TOKEN, vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=PATCHES,
    )
    return LlavaForConditionalGeneration(cfg).eval()


def llama(seed=0, **kw):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TEXT, **kw})).eval()


def llava_inputs(images_per_sample=(1, 1), length=40, seed=1):
    """Samples with the given number of images each (0 = text only), left padding on the first."""
    g = torch.Generator().manual_seed(seed)
    b = len(images_per_sample)
    ids = torch.randint(6, 64, (b, length), generator=g)
    for i, n in enumerate(images_per_sample):
        ids[i, 3 : 3 + n * PATCHES] = IMAGE_TOKEN
    am = torch.ones_like(ids)
    am[0, :2] = 0
    pixels = torch.randn(sum(images_per_sample), 3, 8, 8, generator=g)
    return {"input_ids": ids, "attention_mask": am, "pixel_values": pixels}


@pytest.fixture
def tiny():
    return SimpleNamespace(llava=llava, llama=llama, llava_inputs=llava_inputs, IMAGE_TOKEN=IMAGE_TOKEN,
                           PATCHES=PATCHES)
