"""The NExT-Chat importer (src/groundlm/weights/nextchat.py) on a tiny checkpoint in NExT-Chat's published layout.

The checkpoint is written here from transformers' own models (LlamaForCausalLM, CLIPVisionModel, SamModel) with
random weights, NExT-Chat's key names and config, and a small tokenizer that gained NExT-Chat's five tokens in
NExT-Chat's order. The references compute with those models and the raw tensors, never with groundlm.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, SamConfig, SamModel

import groundlm
from groundlm.images import CLIP_MEAN, CLIP_STD
from groundlm.templates import VICUNA_V1_SYSTEM
from groundlm.tokenizer import build_word_tokenizer
from groundlm.weights import IMPORTERS
from groundlm.weights.keys import WeightsError
from groundlm.weights.nextchat import import_nextchat

HIDDEN = 32
VISION = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1, image_size=56,
              patch_size=14)  # 16 patches; 1 head of width 64, what the importer reads off the shapes
SAM = dict(
    vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
                       output_channels=32, window_size=2, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16),
    prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=16),
    mask_decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                             iou_head_hidden_dim=32),
)
QUESTION = "where is the dog ?"
BOX_BIAS = torch.tensor([0.2, 0.3, 0.6, 0.7])  # the box decoder's bias: decoded boxes stay inside [0, 1]


def _original_sam_name(key: str) -> str:
    """transformers SamModel name → segment-anything's (what NExT-Chat saves under `sam.model.`)."""
    for a, b in (
        (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
        (r"^vision_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
        (r"^vision_encoder\.layers\.", "image_encoder.blocks."),
        (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
        (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
        (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
        (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
        (r"^vision_encoder\.", "image_encoder."),
        (r"^shared_image_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
        (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
        (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
        (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
        (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
        (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
        (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
        (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
        (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
        (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
        (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
        (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    ):
        key = re.sub(a, b, key)
    # SAM's 3-layer MLPs keep one list: proj_in, layers.0, proj_out are its layers 0, 1, 2
    mlp = re.match(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|layers\.0|proj_out)\.(.*)$", key)
    if mlp:
        key = f"{mlp.group(1)}.layers.{['proj_in', 'layers.0', 'proj_out'].index(mlp.group(2))}.{mlp.group(3)}"
    return key


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))  # 40 x 24: padded top and bottom


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny NExT-Chat checkpoint directory plus the reference models and tensors it was written from."""
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("nextchat")
    words = ["a", "chat", "between", "curious", "user", "and", "an", "artificial", "intelligence", "assistant",
             "the", "gives", "helpful", "detailed", "polite", "answers", "to", "s", "questions", "where", "is",
             "dog", "answer", "USER", "ASSISTANT", ":", ".", ",", "?", "'"]
    tokenizer = build_word_tokenizer(words)
    tokenizer.add_tokens(["<im_patch>"], special_tokens=True)  # NExT-Chat's order (initialize_vision_tokenizer)
    tokenizer.add_tokens(["<im_start>", "<im_end>", "<at>", "<boxes>"], special_tokens=True)
    tokenizer.save_pretrained(src)
    vocab = len(tokenizer)
    lcfg = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    llama = LlamaForCausalLM(lcfg).eval()
    vcfg = CLIPVisionConfig(**VISION)
    clip = CLIPVisionModel(vcfg).eval()
    sam = SamModel(SamConfig(**SAM)).eval()
    with torch.no_grad():  # SAM's init is near zero; spread it so the masks vary
        for p in sam.parameters():
            p.normal_(0, 0.3)
    t = lambda *s: torch.randn(*s) * 0.2  # noqa: E731
    raw = {
        "model.mm_projector.0.weight": t(HIDDEN, 64), "model.mm_projector.0.bias": t(HIDDEN),
        "model.mm_projector.2.weight": t(HIDDEN, HIDDEN), "model.mm_projector.2.bias": t(HIDDEN),
        "loc_encoder.0.weight": t(HIDDEN // 2, 4), "loc_encoder.0.bias": t(HIDDEN // 2),
        "loc_encoder.2.weight": t(HIDDEN, HIDDEN // 2), "loc_encoder.2.bias": t(HIDDEN),
        "loc_decoder.0.weight": t(HIDDEN // 2, HIDDEN), "loc_decoder.0.bias": t(HIDDEN // 2),
        "loc_decoder.2.weight": t(4, HIDDEN // 2) * 0.1, "loc_decoder.2.bias": BOX_BIAS.clone(),
        "seg_prompt_mlp.0.weight": t(HIDDEN, HIDDEN), "seg_prompt_mlp.0.bias": t(HIDDEN),
        "seg_prompt_mlp.2.weight": t(4 * 32, HIDDEN), "seg_prompt_mlp.2.bias": t(4 * 32),
    }
    at, patch = tokenizer.convert_tokens_to_ids("<at>"), tokenizer.convert_tokens_to_ids("<im_patch>")

    # NExT-Chat's prompt (vicuna_v1.1 get_prompt, ChatConvProcess), written here independently of groundlm.
    image_tokens = "<im_start>" + "<im_patch>" * 16 + "<im_end>"
    prompt = f"{VICUNA_V1_SYSTEM} USER: {image_tokens} {QUESTION} ASSISTANT:"
    ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def reference(ids_, pixel_values, out_hidden=False):
        ids_t = torch.tensor([ids_])
        embeds = llama.model.embed_tokens(ids_t)
        feats = clip(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]  # [1, 16, 64]
        proj = F.linear(F.gelu(F.linear(feats, raw["model.mm_projector.0.weight"], raw["model.mm_projector.0.bias"])),
                        raw["model.mm_projector.2.weight"], raw["model.mm_projector.2.bias"])
        embeds = embeds.masked_scatter((ids_t == patch)[..., None], proj)
        return llama(inputs_embeds=embeds, output_hidden_states=out_hidden)

    # pixel values the way NExT-Chat makes them: Expand2square on white, then CLIP's resize and normalisation
    img = _image()
    square = Image.new("RGB", (40, 40), (255, 255, 255))
    square.paste(img, (0, (40 - 24) // 2))
    arr = np.asarray(square.resize((56, 56), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    pixels = torch.from_numpy((arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32))
    pixels = pixels.permute(2, 0, 1)[None]
    with torch.no_grad():
        # Script the answer in the weights: `<at>` is the argmax after the prompt (lm_head only: hidden states
        # do not change), so generation emits the trigger, and the box comes from its hidden state.
        last = reference(ids, pixels, out_hidden=True).hidden_states[-1][0, -1]
        llama.lm_head.weight[at] = 50 * last / last.norm()
        h_at = reference([*ids, at], pixels, out_hidden=True).hidden_states[-1][0, -1]  # at the <at> position

    tensors = {f"model.{k}": v for k, v in llama.model.state_dict().items()}
    tensors["lm_head.weight"] = llama.lm_head.weight
    tensors.update({f"model.vision_tower.vision_model.{k}": v for k, v in clip.state_dict().items()})
    tensors.update(raw)
    sam_state = {k: v for k, v in sam.state_dict().items() if k != "prompt_encoder.shared_embedding.positional_embedding"}
    tensors.update({f"sam.model.{_original_sam_name(k)}": v for k, v in sam_state.items()})
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, src / "model.safetensors")
    config = {**lcfg.to_dict(), "model_type": "nextchat", "architectures": ["NextChatForSegLM"],
              "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 64,
              "mm_vision_select_layer": -2, "mm_depth": 2, "use_mm_proj": True, "mm_use_im_start_end": True,
              "sam_path": "/path/to/sam_vit_h_4b8939.pth"}
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path_factory.mktemp("imported")
    report = import_nextchat(src, out, sam_decoder_heads=2)
    return dict(src=src, out=out, report=report, llama=llama, clip=clip, sam=sam, raw=raw, ids=ids, pixels=pixels,
                reference=reference, h_at=h_at, tokenizer=tokenizer, tensors=tensors)


@pytest.fixture(scope="module")
def lm(ckpt):
    return groundlm.load(ckpt["out"])


def _mlp(x, raw, name):
    return F.linear(F.relu(F.linear(x, raw[f"{name}.0.weight"], raw[f"{name}.0.bias"])),
                    raw[f"{name}.2.weight"], raw[f"{name}.2.bias"])


def test_registered_and_ids_kept(ckpt, lm):
    assert IMPORTERS["nextchat"] is import_nextchat
    tok = ckpt["tokenizer"]
    heads = lm.model.config.location_head
    assert heads["trigger_token_id"] == tok.convert_tokens_to_ids("<at>")
    assert heads["slot_token_id"] == tok.convert_tokens_to_ids("<boxes>")
    assert lm.model.config.image_token_id == tok.convert_tokens_to_ids("<im_patch>")
    assert lm.model.config.connector == "mlp2x_gelu" and lm.model.config.vision_config.num_attention_heads == 1
    assert ckpt["report"]["mask_decoder"] == "sam"


def test_prompt_and_pixels_match_nextchat(ckpt, lm):
    enc = lm.processor.prompt(_image(), [{"role": "user", "content": QUESTION}])
    assert enc.input_ids == ckpt["ids"]  # the nextchat template + <im_patch> expansion = NExT-Chat's prompt
    torch.testing.assert_close(enc.pixel_values[None], ckpt["pixels"], atol=1e-5, rtol=0)  # white-padded square


def test_lm_logits_equal_reference(ckpt, lm):
    ids = [*ckpt["ids"], ckpt["tokenizer"].convert_tokens_to_ids("<at>")]
    with torch.no_grad():
        ref = ckpt["reference"](ids, ckpt["pixels"]).logits
        got = lm.model(input_ids=torch.tensor([ids]), pixel_values=ckpt["pixels"]).logits
    assert (got - ref).abs().max().item() < 1e-5


def test_location_heads_equal_the_raw_mlps(ckpt, lm):
    raw, heads = ckpt["raw"], lm.model.location_heads
    hidden, boxes = torch.randn(5, HIDDEN), torch.rand(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(heads.decode(hidden), _mlp(hidden, raw, "loc_decoder"), atol=1e-6, rtol=0)
        torch.testing.assert_close(heads.encode(boxes), _mlp(boxes, raw, "loc_encoder"), atol=1e-6, rtol=0)
        prompt = heads.mask_decoder.prompt(hidden)
        torch.testing.assert_close(prompt, _mlp(hidden, raw, "seg_prompt_mlp"), atol=1e-6, rtol=0)


def test_generated_trigger_gives_the_raw_decoders_box(ckpt, lm):
    answer = lm.ask(_image(), QUESTION, max_new_tokens=2)
    assert answer.text.replace(" ", "").startswith("<at><boxes>")
    with torch.no_grad():
        expected = _mlp(ckpt["h_at"], ckpt["raw"], "loc_decoder")  # the raw decoder on the <at> hidden state
    assert len(answer.objects) == 1
    got = torch.tensor(answer.objects[0].box_norm)
    assert (got - expected).abs().max().item() < 1e-5
    assert answer.objects[0].mask is not None  # SAM ran on the decoded box (COCO RLE)


def test_sam_weights_reproduce_sammodel_for_a_box_prompt(ckpt, lm):
    sam, imported = ckpt["sam"], lm.model.location_heads.mask_decoder.sam
    pixels = torch.randn(1, 3, 64, 64)
    boxes = torch.tensor([[[8.0, 12.0, 40.0, 50.0]]])
    with torch.no_grad():
        ref = sam(pixel_values=pixels, input_boxes=boxes, multimask_output=False).pred_masks
        got = imported(pixel_values=pixels, input_boxes=boxes, multimask_output=False).pred_masks
    assert ref.abs().max() > 1.0
    assert (got - ref).abs().max().item() < 1e-5


def test_sam_prompt_is_four_tokens_then_the_box(ckpt, lm):
    """NExT-Chat's prompt: seg_prompt_mlp → 4 tokens, then the box `pred_locs * 1024` (SAM's input size)."""
    sam, decoder, raw = ckpt["sam"], lm.model.location_heads.mask_decoder, ckpt["raw"]
    hidden, boxes = torch.randn(2, HIDDEN), torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.3, 0.1, 0.6, 0.5]])
    with torch.no_grad():
        embeddings = sam.get_image_embeddings(torch.randn(2, 3, 64, 64))
        tokens = _mlp(hidden, raw, "seg_prompt_mlp").view(2, 1, 4, 32)
        corners, dense = sam.prompt_encoder(None, None, (boxes * 64).view(2, 1, 4), None)
        ref, _ = sam.mask_decoder(embeddings, sam.get_image_wide_positional_embeddings().repeat(2, 1, 1, 1),
                                  torch.cat([tokens, corners], 2), dense, multimask_output=False)
        got = decoder.masks(embeddings, hidden, boxes)
    assert (got - ref[:, 0, 0]).abs().max().item() < 1e-5


def test_unknown_and_missing_keys_are_named(ckpt, tmp_path):
    from safetensors.torch import load_file

    src = tmp_path / "bad"
    src.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((ckpt["src"] / f).read_bytes())
    tensors = load_file(ckpt["src"] / "model.safetensors")
    tensors["model.extra_head.weight"] = torch.zeros(2)
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(WeightsError, match="model.extra_head.weight"):
        import_nextchat(src, tmp_path / "out1", sam_decoder_heads=2)
    del tensors["model.extra_head.weight"], tensors["loc_decoder.2.bias"]
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(WeightsError, match=r"location_heads\.box_decoder\.2\.bias"):
        import_nextchat(src, tmp_path / "out2", sam_decoder_heads=2)


def test_wrong_model_type_names_the_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(WeightsError, match="model_type"):
        import_nextchat(tmp_path, tmp_path / "out")


def test_a_local_sam_directory_becomes_the_mask_decoder(tmp_path):
    """`location_head: {mask_decoder: sam, sam_path: DIR}`: a transformers SAM saved locally replaces the
    miniature decoder, with its own weights; without a path or a config it is a clear error."""
    from groundlm.presets import ModelSpec, build_model

    torch.manual_seed(0)
    sam = SamModel(SamConfig(**SAM)).eval()
    sam.save_pretrained(tmp_path / "sam")
    spec = ModelSpec(preset="tiny", connector="concat4", location_codec="embedding",
                     location_head={"mask_decoder": "sam", "sam_path": str(tmp_path / "sam")})
    model, _ = build_model(spec, seed=0)
    decoder = model.location_heads.mask_decoder
    assert type(decoder).__name__ == "SamMaskDecoder"
    saved = sam.state_dict()
    assert all(torch.equal(decoder.sam.state_dict()[k], v) for k, v in saved.items())
    missing = ModelSpec(preset="tiny", connector="concat4", location_codec="embedding",
                        location_head={"mask_decoder": "sam"})
    with pytest.raises(ValueError, match="needs sam_path"):
        build_model(missing, seed=0)
