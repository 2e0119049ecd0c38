"""The one language-model-prefix function: get_decoder, then ``language_model`` / ``text_model``, then ``model``."""

from __future__ import annotations

import pytest
import torch.nn as nn

from dymoe.errors import DymoeError
from dymoe.injection.targets import find_target_linears, language_model_prefix
from dymoe.models.llava import language_model_prefix as loading_prefix


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(4, 4)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])


class Vision(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Decoder()  # its attention also has q_proj


class IdeficsLike(nn.Module):  # no get_decoder: found by the name text_model
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.vision_model = Vision()
        self.model.text_model = Decoder()


class CausalLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Decoder()
        self.lm_head = nn.Linear(4, 9)


def test_prefix_by_name_and_for_causal_lms_and_bare_decoders():
    assert language_model_prefix(IdeficsLike()) == "model.text_model"
    assert language_model_prefix(CausalLike()) == "model"
    assert language_model_prefix(Decoder()) == ""
    with pytest.raises(DymoeError, match="cannot find the language model"):
        language_model_prefix(nn.Linear(2, 2))
    assert loading_prefix is language_model_prefix  # loading and injection share it


def test_targets_stay_in_the_text_model():
    found = find_target_linears(IdeficsLike(), ["q_proj"])
    assert sorted(found) == ["model.text_model.layers.0.q_proj", "model.text_model.layers.1.q_proj"]
