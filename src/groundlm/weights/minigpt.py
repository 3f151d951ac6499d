"""MiniGPT-v2 and MiniGPT-4 released checkpoints -> a groundlm model directory.

A MiniGPT model is four files' worth of weights, loaded one over the other as MiniGPT does (each a
`strict=False` load, later files winning): the EVA ViT-g tower (`eva_vit_g.pth`, weights/eva.py), for the
Vicuna MiniGPT-4 the BLIP-2 checkpoint with `ln_vision`, `query_tokens` and the Q-Former
(`blip2_pretrained_flant5xxl.pth`, weights/qformer.py), the released `.pth` whose `ckpt["model"]` holds what
training changed (`llama_proj`; MiniGPT-v2 adds the LoRA weights of `llama_model`), and the base LLM directory
(Llama-2-chat-7B for MiniGPT-v2, Vicuna for MiniGPT-4). Facts: /work/shared/reference/minigpt.md and
published_models.md §1c, §1e.

groundlm's model (modeling/): `Blip2VisionModel` tower, hidden state -1 (the last of the kept blocks), then
- MiniGPT-v2 and MiniGPT-4 (LLaMA-2): `ln_vision` as `vision_norm` (`vision_feature_norm`), CLS dropped, the
  `concat4` connector (4 sequence-adjacent tokens concatenated, MiniGPT-v2's `view(bs, pn/4, 4*hs)`) whose
  Linear is `llama_proj`;
- MiniGPT-4 (Vicuna): every token incl. CLS (`full`) into the `qformer` connector: `ln_vision` as its
  `vision_norm`, `query_tokens`, the Q-Former (transformers' `Blip2QFormerModel`) and `llama_proj`.
The LoRA adapters (r from the tensors; alpha 16, targets from the keys) are merged into the LLM weights with
peft, or (`merge_lora=False`) the base weights are written and the adapter is saved with peft beside them in
`lora_adapter/`, which `groundlm.load` does not read: attach it with
`peft.PeftModel.from_pretrained(model.model.language_model, out / "lora_adapter")`.

Every name is accounted for: a file's names are mapped, or known and dropped (reported in
`import_report.json`), or the import stops with an error naming them; a weight the model needs that no file
holds is an error too, except MiniGPT-v2's `ln_vision`, which MiniGPT-v2 never loads (its LayerNorm keeps
weight 1, bias 0: derived from the code, UNCONFIRMED by a tensor dump; a file that holds it wins).
Not confirmed: which LoRA key infix the released v2 file has (`lora_A.weight`, peft 0.2.0, or
`lora_A.default.weight`, later peft; both are read); whether `eva_vit_g.pth` holds a 40th block (dropped if
so). Differences from the release: it runs the tower in fp16 and the LLM in fp16 (8-bit in the demos); the
import writes `dtype` (float32 by default). The tokenizer is the LLM directory's (AutoTokenizer, the fast one
when present; MiniGPT uses the slow `LlamaTokenizer`), with `<image>` added as one special token (one new
embedding row, never used as an input embedding) and the unk token as pad (MiniGPT pads with "$$"; padding is
masked either way).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import AddedToken
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..images import CLIP_MEAN, CLIP_STD
from ..modeling import GroundLMConfig, GroundLMForConditionalGeneration
from ..modeling.connector import build_connector
from ..processor import GroundLMProcessor, ProcessorConfig
from ..templates import get_template
from .eva import EVA_DEPTH, eva_to_blip2_vision, eva_vision_config
from .keys import WeightsError, as_state_dict, load_pickle
from .qformer import BERT_BASE_HEADS, is_qformer_name, lavis_qformer_config, lavis_to_blip2_qformer

# MiniGPT-v2's LoRA (minigpt_v2.py defaults, minigpt_v2.yaml): r 64, alpha 16, q_proj and v_proj.
MINIGPTV2_LORA_ALPHA = 16
LORA_DIR = "lora_adapter"
REPORT_FILE = "import_report.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_LORA = re.compile(r"llama_model\.base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight")
_LN_VISION = ("ln_vision.weight", "ln_vision.bias")


@dataclass
class _Weights:
    """MiniGPT's composite-model names -> tensors, loaded file after file (a later file wins, as MiniGPT's
    successive `strict=False` loads do); remembers which file each name came from."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    overridden: list[str] = field(default_factory=list)

    def add(self, weights: dict[str, torch.Tensor], source: Path) -> None:
        for name, tensor in weights.items():
            if name in self.tensors:
                self.overridden.append(f"{name} ({self.origin[name]} -> {source})")
            self.tensors[name] = tensor
            self.origin[name] = str(source)

    def take(self, prefix: str) -> dict[str, torch.Tensor]:
        """The names under `prefix`, without it."""
        return {n[len(prefix) :]: t for n, t in self.tensors.items() if n.startswith(prefix)}

    def where(self, names) -> str:
        return ", ".join(f"{n} ({self.origin.get(n, '?')})" for n in names)


def read_pth(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict of a `.pth` file: `ckpt["model"]` when present, else the file's own dict of tensors.

    Loaded with `weights_only=True` (plain containers and tensors only; nothing is ever unpickled beyond that).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is not a file")
    ckpt = load_pickle(path)
    return as_state_dict(ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt, path)


def _eva_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """`eva_vit_g.pth` names, put under MiniGPT's `visual_encoder.` (accepted with or without it)."""
    weights = read_pth(path, "EVA ViT weights")
    return {n if n.startswith("visual_encoder.") else f"visual_encoder.{n}": t for n, t in weights.items()}


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module` (built on the meta device), first naming every missing or extra key."""
    expected = set(module.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise WeightsError(
            f"{what}: weights missing for {missing[:20]}; not in the model: {extra[:20]}"
        )
    module.load_state_dict(state, strict=True, assign=True)


def _language_model(path: str | Path, dtype: torch.dtype):
    """The base LLM and its tokenizer from a local directory, with the `<image>` token and a pad token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(f"cannot load the base language model from {str(path)!r}: {err}") from err
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken("<image>", special=True, normalized=False)]}
        )
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is None:
            raise WeightsError(f"{path}: the tokenizer has neither a pad nor an unk token to pad with")
        tokenizer.pad_token = tokenizer.unk_token
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer))  # the new rows at the mean of the old ones
    return lm, tokenizer


def _lora(weights: _Weights, src: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The LoRA tensors of `llama_model` keyed by peft's names (`…q_proj.lora_A.default.weight` under
    `base_model.model.`), and the target module names (`q_proj`, `v_proj`)."""
    lora, unknown, targets = {}, [], set()
    for name, tensor in weights.take("llama_model.").items():
        match = _LORA.fullmatch("llama_model." + name)
        if match is None:
            unknown.append("llama_model." + name)
            continue
        module = match[1]
        targets.add(module.rsplit(".", 1)[-1])
        lora[f"base_model.model.{module}.lora_{match[2]}.default.weight"] = tensor
    if unknown:
        raise WeightsError(f"{src}: llama_model weights that are not LoRA A/B matrices: {unknown[:20]}")
    return lora, sorted(targets)


def _attach_lora(
    lm, lora: dict[str, torch.Tensor], targets: list[str], alpha: int, merge: bool, out: Path, src
):
    """The LLM with the adapters merged (peft's `merge_and_unload`), or its base after saving the adapter."""
    ranks = {t.shape[0] for n, t in lora.items() if ".lora_A." in n}
    if len(ranks) != 1:
        raise WeightsError(f"{src}: the LoRA A matrices have different ranks {sorted(ranks)}")
    config = LoraConfig(
        r=ranks.pop(), lora_alpha=alpha, lora_dropout=0.05, target_modules=targets, bias="none"
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; nothing for a user to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(lm, config)
    expected = {n for n, _ in peft_model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    missing, extra = sorted(expected - set(lora)), sorted(set(lora) - expected)
    if missing or extra:
        raise WeightsError(
            f"{src}: LoRA weights missing for {missing[:10]}; for no module of the LLM: {extra[:10]}"
        )
    dtype = next(iter(lm.parameters())).dtype
    result = peft_model.load_state_dict({n: t.to(dtype) for n, t in lora.items()}, strict=False)
    if result.unexpected_keys:
        raise WeightsError(f"{src}: LoRA weights peft did not take: {result.unexpected_keys[:10]}")
    if merge:
        return peft_model.merge_and_unload()
    peft_model.save_pretrained(out / LORA_DIR, save_embedding_layers=False)
    return peft_model.unload()


def _check_unused(weights: _Weights, used_prefixes: tuple[str, ...], dropped: list[str]) -> None:
    unknown = [n for n in weights.tensors if not n.startswith(used_prefixes) and n not in dropped]
    if unknown:
        raise WeightsError(f"names no MiniGPT part of this model has: {weights.where(unknown[:20])}")


def _assemble(
    weights: _Weights,
    *,
    kind: str,
    src: Path,
    out: Path,
    llm: str | Path,
    image_size: int,
    template: str,
    dtype: str,
    vision_layers: int,
    vision_heads: int | None,
    qformer_heads: int,
    require_ln_vision: bool,
    lora_alpha: int | None,
    merge_lora: bool,
    sources: dict[str, str],
) -> Path:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    get_template(template)  # a ValueError naming the templates
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; the import writes a fresh model directory")
    torch_dtype = DTYPES[dtype]
    report: dict = {"kind": kind, "sources": sources, "dropped": [], "assumed": []}

    # ln_vision: from a file, or (MiniGPT-v2, MiniGPT-4 LLaMA-2) the LayerNorm init MiniGPT runs with.
    if "visual_encoder.cls_token" not in weights.tensors:
        raise WeightsError(
            "no EVA weights: `cls_token` (visual_encoder.cls_token) is in none of the files"
        )
    width = weights.tensors["visual_encoder.cls_token"].shape[-1]
    if all(n in weights.tensors for n in _LN_VISION):
        ln_vision = {"weight": weights.tensors["ln_vision.weight"], "bias": weights.tensors["ln_vision.bias"]}
    elif require_ln_vision:
        raise WeightsError(f"ln_vision.weight/bias are in none of {list(sources.values())}")
    else:
        ln_vision = {"weight": torch.ones(width), "bias": torch.zeros(width)}
        report["assumed"].append("ln_vision: weight 1, bias 0 (MiniGPT never loads it for this model)")

    # The tower.
    eva = weights.take("visual_encoder.")
    vision_config = eva_vision_config(eva, image_size=image_size, depth=vision_layers, heads=vision_heads)
    tower_state, tower_unused, tower_missing = eva_to_blip2_vision(eva, vision_config, ln_vision)
    beyond = [
        n for n in tower_unused if (m := re.match(r"blocks\.(\d+)\.", n)) and int(m[1]) >= vision_layers
    ]
    other = [n for n in tower_unused if n not in beyond]
    if other or tower_missing:
        raise WeightsError(
            f"EVA tower: names not in MiniGPT's EVA ViT: {weights.where(['visual_encoder.' + n for n in other][:20])}; "
            f"missing (transformers names): {tower_missing[:20]}"
        )
    report["dropped"] += [f"visual_encoder.{n} (beyond MiniGPT's {vision_layers} blocks)" for n in beyond]

    # The connector: concat4 + llama_proj, or ln_vision + Q-Former + llama_proj.
    proj = weights.take("llama_proj.")
    if set(proj) != {"weight", "bias"}:
        raise WeightsError(
            f"{src}: llama_proj.weight and llama_proj.bias expected, found {sorted(proj)}"
        )
    has_qformer = any(is_qformer_name(n) for n in weights.tensors)
    dropped: list[str] = []
    if has_qformer:
        qformer_config = lavis_qformer_config(weights.tensors, encoder_hidden_size=width, heads=qformer_heads)
        qformer_state, dropped, unknown = lavis_to_blip2_qformer(weights.tensors)
        if unknown:
            raise WeightsError(f"Q-Former names not in LAVIS's layout: {weights.where(unknown[:20])}")
        if "query_tokens" not in weights.tensors:
            raise WeightsError(f"query_tokens is in none of {list(sources.values())}")
        queries = weights.tensors["query_tokens"]
        connector_state = {
            **{f"qformer.{n}": t.float() for n, t in qformer_state.items()},  # kept in fp32, as BLIP-2 does
            "query_tokens": queries.float(),
            "vision_norm.weight": ln_vision["weight"],
            "vision_norm.bias": ln_vision["bias"],
        }
        connector, select, num_queries = "qformer", "full", queries.shape[1]
        expected_in = qformer_config.hidden_size
    else:
        qformer_config, connector_state = None, {}
        connector, select, num_queries = "concat4", "default", 32
        expected_in = 4 * width
    connector_state |= {"linear.weight": proj["weight"], "linear.bias": proj["bias"]}
    if proj["weight"].shape[1] != expected_in:
        raise WeightsError(
            f"{src}: llama_proj.weight is {list(proj['weight'].shape)}; the {connector} connector needs "
            f"{expected_in} inputs (a checkpoint of another MiniGPT variant?)"
        )
    report["dropped"] += dropped
    prefixes = ("visual_encoder.", "llama_proj.", "llama_model.", "ln_vision.", "query_tokens", "Qformer.")
    _check_unused(weights, prefixes, dropped)

    # The language model (+ LoRA), then the model on the meta device with the parts put in place.
    lm, tokenizer = _language_model(llm, torch_dtype)
    if proj["weight"].shape[0] != lm.config.hidden_size:
        raise WeightsError(
            f"{src}: llama_proj.weight is {list(proj['weight'].shape)} but the LLM in {llm} has width "
            f"{lm.config.hidden_size} (a checkpoint for another LLM size?)"
        )
    lora, targets = _lora(weights, src)
    if lora and lora_alpha is None:
        raise WeightsError(
            f"{src} holds LoRA weights of llama_model; MiniGPT-4 has none (use the minigptv2 importer)"
        )
    if not lora and lora_alpha is not None:
        raise WeightsError(
            f"{src} holds no LoRA weights of llama_model (llama_model.…lora_A.weight); MiniGPT-v2 has them"
        )
    if lora:
        out.mkdir(parents=True, exist_ok=True)
        lm = _attach_lora(lm, lora, targets, lora_alpha, merge_lora, out, src)
        report["lora"] = {"targets": targets, "alpha": lora_alpha, "merged": merge_lora}

    processor_probe = GroundLMConfig(
        vision_config=vision_config, connector=connector, vision_feature_select_strategy=select,
        num_query_tokens=num_queries, qformer_config=qformer_config,
    )  # fmt: skip
    processor = GroundLMProcessor(
        tokenizer,
        ProcessorConfig(
            template=template, image_size=image_size, frame="resize",
            num_image_tokens=processor_probe.num_image_tokens, mean=CLIP_MEAN, std=CLIP_STD,
            location_bins=100, location_codec="text",
        ),
    )  # fmt: skip
    config = GroundLMConfig(
        vision_config=vision_config,
        text_config=lm.config,
        qformer_config=qformer_config,
        connector=connector,
        num_query_tokens=num_queries,
        vision_feature_layer=-1,
        vision_feature_select_strategy=select,
        vision_feature_norm=connector == "concat4",  # ln_vision; the Q-Former connector has its own
        image_token_id=processor.image_token_id,
        frame="resize",
        location_codec="text",
        location_bins=100,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device("meta"):
        model = GroundLMForConditionalGeneration(config)
        connector_module = build_connector(config)
    _strict_load(model.vision_tower, {n: t.to(torch_dtype) for n, t in tower_state.items()}, "EVA tower")
    connector_state = {
        n: t if n.startswith(("qformer.", "query_tokens")) else t.to(torch_dtype)
        for n, t in connector_state.items()
    }
    _strict_load(connector_module, connector_state, "connector")
    model.connector = connector_module
    if model.vision_norm is not None:
        _strict_load(model.vision_norm, {n: t.to(torch_dtype) for n, t in ln_vision.items()}, "ln_vision")
    model.language_model = lm
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise RuntimeError(f"parameters left unset after the import: {left[:5]}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.stop_token_id or tokenizer.eos_token_id
    report["overridden"] = weights.overridden
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return out


def import_minigptv2(
    src: str | Path,
    out: str | Path,
    *,
    eva: str | Path,
    llm: str | Path,
    merge_lora: bool = True,
    image_size: int = 448,
    lora_alpha: int = MINIGPTV2_LORA_ALPHA,
    template: str = "llama2",
    dtype: str = "float32",
    vision_layers: int = EVA_DEPTH,
    vision_heads: int | None = None,
) -> None:
    """Write a groundlm model directory `out` from a MiniGPT-v2 release.

    Args:
        src: the released checkpoint (`minigptv2_checkpoint.pth`; `ckpt["model"]`: `llama_proj` and the LoRA
            weights of `llama_model`).
        eva: the EVA ViT-g weights (`eva_vit_g.pth`, 224 px; resized to `image_size`).
        llm: the base LLM directory (Llama-2-7b-chat-hf) with its tokenizer.
        merge_lora: fold the adapters into the LLM weights (default), or write the base weights and the
            adapter in `out/lora_adapter` (peft format).
        lora_alpha: MiniGPT-v2's LoRA alpha (16); r comes from the tensors.
        vision_layers: the EVA blocks MiniGPT builds (39); the file's further blocks are dropped.
        vision_heads: the tower's head count (default: width // 88, MiniGPT's rule).
    """
    weights = _Weights()
    weights.add(_eva_weights(eva), Path(eva))
    weights.add(read_pth(src, "MiniGPT-v2 checkpoint"), Path(src))
    qformer = [n for n in weights.tensors if is_qformer_name(n)]
    if qformer:
        raise WeightsError(
            f"MiniGPT-v2 has no Q-Former, but {weights.where(qformer[:5])} are Q-Former weights"
        )
    _assemble(
        weights, kind="minigptv2", src=Path(src), out=Path(out), llm=llm, image_size=image_size,
        template=template, dtype=dtype, vision_layers=vision_layers, vision_heads=vision_heads,
        qformer_heads=BERT_BASE_HEADS, require_ln_vision=False, lora_alpha=lora_alpha, merge_lora=merge_lora,
        sources={"checkpoint": str(src), "eva": str(eva), "llm": str(llm)},
    )  # fmt: skip


def import_minigpt4(
    src: str | Path,
    out: str | Path,
    *,
    eva: str | Path,
    llm: str | Path,
    qformer: str | Path | None = None,
    image_size: int = 224,
    template: str | None = None,
    dtype: str = "float32",
    vision_layers: int = EVA_DEPTH,
    vision_heads: int | None = None,
    qformer_heads: int = BERT_BASE_HEADS,
) -> None:
    """Write a groundlm model directory `out` from a MiniGPT-4 release (Vicuna with the Q-Former, or LLaMA-2).

    Args:
        src: the released checkpoint (`pretrained_minigpt4*.pth`; `ckpt["model"]`: `llama_proj`, and the
            Q-Former and `query_tokens` if they were trained).
        eva: the EVA ViT-g weights (`eva_vit_g.pth`).
        llm: the base LLM directory (Vicuna, or Llama-2-chat for the LLaMA-2 variant) with its tokenizer.
        qformer: the BLIP-2 checkpoint MiniGPT-4 takes `ln_vision`, `query_tokens` and the Q-Former from
            (`blip2_pretrained_flant5xxl.pth`); needed unless `src` holds them. Without any Q-Former weights
            the model is the LLaMA-2 variant (concat4; `ln_vision` at its init).
        template: `vicuna` for the Q-Former variant, `llama2` for the LLaMA-2 one (the default follows the
            variant).
        qformer_heads: the Q-Former's head count (12: bert-base).
    """
    weights = _Weights()
    weights.add(_eva_weights(eva), Path(eva))
    sources = {"checkpoint": str(src), "eva": str(eva), "llm": str(llm)}
    if qformer is not None:
        weights.add(read_pth(qformer, "BLIP-2 Q-Former checkpoint"), Path(qformer))
        sources["qformer"] = str(qformer)
    weights.add(read_pth(src, "MiniGPT-4 checkpoint"), Path(src))
    has_qformer = any(is_qformer_name(n) for n in weights.tensors)
    _assemble(
        weights, kind="minigpt4", src=Path(src), out=Path(out), llm=llm, image_size=image_size,
        template=template or ("vicuna" if has_qformer else "llama2"), dtype=dtype, vision_layers=vision_layers,
        vision_heads=vision_heads, qformer_heads=qformer_heads, require_ln_vision=has_qformer, lora_alpha=None,
        merge_lora=True, sources=sources,
    )  # fmt: skip


__all__ = ["LORA_DIR", "REPORT_FILE", "WeightsError", "import_minigpt4", "import_minigptv2", "read_pth"]
