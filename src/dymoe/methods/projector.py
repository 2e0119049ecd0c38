"""Training the vision-language projector beside the adapter, as CoIN does for its LoRA and MoELoRA baselines
(``--mm_projector_lr 2e-5``, coin-protocol.md §6): the projector's weights become trainable, get their own learning
rate (an optimizer parameter group), and are saved with the method state so that task checkpoints and resumed runs
carry them.

The methods that can train it (``lora`` and its subclasses ``ewc``/``lwf``, ``moelora``, ``inclora``/``olora``)
take the option ``projector_lr`` (None = frozen, the default). LLaVA-DyMoE keeps it frozen ("only newly added
modules are trainable", dymoe.md A9). The method registers the projector as a module it owns
(:meth:`~dymoe.methods.base.Method.register_module`): its tensors are saved with the method state as
``module.projector.*`` and restored on resume; a batch without images still touches it (a zero loss term,
``projector_idle``) so that DDP sees it take part in every step.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dymoe.errors import ConfigError

#: module-name suffixes of the vision-to-language projector in Hugging Face VLMs (LLaVA and its relatives,
#: Gemma3/PaliGemma/Mistral3: ``multi_modal_projector``; original LLaVA: ``mm_projector``; Idefics3/SmolVLM:
#: ``connector``; Qwen2/2.5-VL: ``visual.merger``; InternVL: ``mlp1``)
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "visual.merger", "mlp1")


def check_projector_lr(lr: float | None) -> None:
    """Validate a ``projector_lr`` option: None or > 0."""
    if lr is not None and float(lr) <= 0:
        raise ConfigError(f"projector_lr must be > 0 or null (frozen), got {lr}")


def find_projector(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the model's projector (the first module whose name ends with a :data:`PROJECTOR_NAMES`
    entry, in model order).

    Raises:
        ConfigError: the model has none (a text-only model), naming what was looked for.
    """
    for name, module in model.named_modules():
        if any(name == n or name.endswith("." + n) for n in PROJECTOR_NAMES) and any(True for _ in module.parameters()):
            return name, module
    raise ConfigError(
        f"method.projector_lr is set but {type(model).__name__} has no vision-language projector "
        f"(looked for modules named {list(PROJECTOR_NAMES)}); leave projector_lr unset (null) for this backbone"
    )


def _inputs_to_fp32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to(dtype: torch.dtype):
    def hook(module: nn.Module, args: tuple, output):
        return output.to(dtype) if torch.is_tensor(output) and output.is_floating_point() else output

    return hook


class TrainableProjector:
    """The projector of ``model``, unfrozen, with its learning rate and its tensors by model parameter name."""

    def __init__(self, model: nn.Module, lr: float):
        if lr <= 0:
            raise ConfigError(f"method.projector_lr must be > 0 or null, got {lr}")
        self.prefix, self.module = find_projector(model)
        self.lr = float(lr)
        dtype = next(self.module.parameters()).dtype
        if dtype != torch.float32 and not getattr(self.module, "_dymoe_fp32_master", False):
            # fp32 master weights under a bf16/fp16 base (as the adapter's param_dtype float32): at lr 2e-5 most
            # bf16 updates would round away. Inputs are cast up, outputs back to the model's dtype.
            self.module.float()
            self.module.register_forward_pre_hook(_inputs_to_fp32)
            self.module.register_forward_hook(_output_to(dtype))
            self.module._dymoe_fp32_master = True
        for p in self.module.parameters():
            p.requires_grad_(True)

    def named_parameters(self) -> dict[str, nn.Parameter]:
        """``{model parameter name: parameter}`` (the names ``torch.func.functional_call`` takes)."""
        return {f"{self.prefix}.{n}": p for n, p in self.module.named_parameters()}

    def parameters(self) -> list[nn.Parameter]:
        return list(self.module.parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())
