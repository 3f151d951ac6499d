"""What trains in a stage: freezing, LoRA adapters (peft), parameter groups, train/eval modes and activation
checkpointing, and stable parameter names.

The language model (what LoRA adapts) is the model's shallowest module called `language_model`: groundlm's
own, or `model.language_model` of a transformers family checkpoint (Qwen2.5-VL, PaliGemma; backends/), so the
same code trains both (`parts` lists the modules a recipe's `train:` names).

peft renames what it wraps (`language_model.base_model.model.…q_proj.base_layer.weight`). Checkpoints and
module paths use *canonical* names with those wrapper parts removed, so a name means the same weight whether
or not an adapter is attached, and a checkpoint written with adapters loads into a model rebuilt with them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from .recipe import LoraSpec, RecipeError, StageSpec


def canonical_name(name: str) -> str:
    """A parameter name without peft's wrapper parts (`base_model.model.`, `.base_layer`)."""
    return name.replace("base_model.model.", "").replace(".base_layer", "")


def named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's parameters by canonical name."""
    return {canonical_name(n): p for n, p in model.named_parameters()}


def is_lora(name: str) -> bool:
    """Whether a parameter belongs to a LoRA adapter."""
    return ".lora_A." in name or ".lora_B." in name


def lora_config(spec: LoraSpec) -> LoraConfig:
    """The peft config of a LoRA spec (bias untouched, as MiniGPT-v2 and LLaVA)."""
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        bias="none",
    )


def language_model_path(model: nn.Module) -> str:
    """The path of the model's language model: its shallowest module named `language_model`."""
    found = [n for n, _ in model.named_modules() if n.rpartition(".")[2] == "language_model"]
    if not found:
        raise ValueError(f"{type(model).__name__} has no module called language_model to train")
    return min(found, key=lambda n: n.count("."))


def _holder(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the language model, and its attribute name there."""
    parent, _, name = language_model_path(model).rpartition(".")
    return (model.get_submodule(parent) if parent else model), name


def parts(model: nn.Module) -> dict[str, nn.Module]:
    """The model's parts by path: its top-level modules with parameters, where the module holding the language
    model stands for its children (groundlm: vision_tower, connector, language_model, ...; a family
    checkpoint: model.visual or model.vision_tower, model.multi_modal_projector, model.language_model, lm_head)."""
    lm = language_model_path(model)
    found: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if lm.startswith(name + "."):
            found.update({f"{name}.{n}": m for n, m in child.named_children()})
        else:
            found[name] = child
    # parts with parameters of their own (a tied output layer is the embedding's, named there)
    owned = [n for n, _ in model.named_parameters()]
    return {path: m for path, m in found.items() if any(n.startswith(path + ".") for n in owned)}


def merge_lora(model: nn.Module) -> list[str]:
    """Fold the language model's adapters into its weights and drop them; returns the changed weights' names."""
    holder, name = _holder(model)
    lm = getattr(holder, name)
    if not isinstance(lm, PeftModel):
        return []
    path = language_model_path(model)
    changed = [canonical_name(f"{path}.{n}") for n, _ in lm.named_parameters() if ".base_layer." in n]
    setattr(holder, name, lm.merge_and_unload())
    return changed


def _shape(spec: LoraSpec | None) -> tuple | None:
    return None if spec is None else (spec.r, spec.alpha, spec.dropout, tuple(spec.target_modules))


def set_lora(model: nn.Module, current: LoraSpec | None, wanted: LoraSpec | None) -> list[str]:
    """Make the model carry the adapters of `wanted`, given that it carries those of `current`.

    Same shape (r, alpha, dropout, targets; the learning rate may differ): the adapters stay and keep
    training. Otherwise the current adapters are merged into the weights (so what they learned is kept) and
    fresh ones are attached. Returns the names of weights a merge changed.
    """
    if _shape(current) == _shape(wanted):
        return []
    changed = merge_lora(model)
    if wanted is not None:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing`; nothing for a user to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            holder, name = _holder(model)
            setattr(holder, name, get_peft_model(getattr(holder, name), lora_config(wanted)))
    return changed


def _module_of(name: str, paths: Iterable[str]) -> str | None:
    """The longest module path in `paths` that contains the parameter `name`."""
    best = None
    for path in paths:
        if (name == path or name.startswith(path + ".")) and (best is None or len(path) > len(best)):
            best = path
    return best


def configure_trainable(model: nn.Module, stage: StageSpec, where: str) -> list[dict]:
    """Freeze everything but the stage's modules and adapters; return AdamW parameter groups.

    Each trained module gets two groups at its learning rate: weights with >= 2 dims decay, biases and norm
    scales do not (MiniGPT-4's and LLaVA's rule). LoRA adapters form their own groups at `lora.lr`.
    """
    params = named_parameters(model)
    for p in params.values():
        p.requires_grad_(False)
    groups: dict[tuple[str, bool], list] = {}
    for path in stage.train:
        matched = [n for n in params if not is_lora(n) and _module_of(n, [path]) == path]
        if not matched:
            raise RecipeError(
                f"{where}.train.{path}: matches no parameter of the model (modules are paths such as "
                f"{', '.join(parts(model))} or one of their submodules)"
            )
    for name, p in params.items():
        if is_lora(name):
            key = ("lora", False)
        else:
            path = _module_of(name, stage.train)
            if path is None:
                continue
            key = (path, p.ndim >= 2)
        p.requires_grad_(True)
        groups.setdefault(key, []).append((name, p))
    out = []
    for (path, decay), members in groups.items():
        lr = stage.lora.lr if path == "lora" else stage.train[path]
        out.append(
            {
                "params": [p for _, p in members],
                "names": [n for n, _ in members],
                "lr": lr,
                "weight_decay": stage.weight_decay if decay else 0.0,
                "module": path,
            }
        )
    # A fixed order: the optimizer's state is saved by position, so a resumed run must rebuild the same groups.
    out.sort(key=lambda g: (g["module"], g["weight_decay"] == 0.0))
    return out


def set_train_modes(model: nn.Module) -> None:
    """Training mode for modules that learn; a part (`parts`) with nothing to learn runs as at inference."""
    model.train()
    for module in parts(model).values():
        if not any(p.requires_grad for p in module.parameters()):
            module.eval()


def set_activation_checkpointing(model: nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing on or off; non-reentrant, so frozen inputs need no grad hack."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old names warn
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def trained_state(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters called `names` (canonical), for a checkpoint."""
    params = named_parameters(model)
    return {n: params[n].detach().to("cpu").contiguous().clone() for n in sorted(names) if n in params}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy checkpointed parameters into the model; names the checkpoint and the unknown parameter."""
    params = named_parameters(model)
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"{where}: holds parameters this model does not have, e.g. {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"{where}: {name} has shape {tuple(tensor.shape)}, the model {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)
