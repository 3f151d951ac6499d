"""The groundlm model: config, vision tower, connector and the `GroundLMForConditionalGeneration` model.

Importing this package registers the model with transformers' Auto classes, so `AutoConfig` and
`AutoModelForImageTextToText` (and `AutoModelForCausalLM`) load a saved groundlm directory.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from .config import GroundLMConfig
from .connector import CONNECTORS, build_connector
from .model import GroundLMCausalLMOutputWithPast, GroundLMForConditionalGeneration, GroundLMPreTrainedModel
from .vision import VISION_TOWERS, build_vision_tower, load_vision_tower, select_image_features

# exist_ok: re-importing (e.g. importlib.reload in a notebook) must not fail.
AutoConfig.register(GroundLMConfig.model_type, GroundLMConfig, exist_ok=True)
AutoModelForImageTextToText.register(GroundLMConfig, GroundLMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(GroundLMConfig, GroundLMForConditionalGeneration, exist_ok=True)

__all__ = [
    "CONNECTORS",
    "VISION_TOWERS",
    "GroundLMCausalLMOutputWithPast",
    "GroundLMConfig",
    "GroundLMForConditionalGeneration",
    "GroundLMPreTrainedModel",
    "build_connector",
    "build_vision_tower",
    "load_vision_tower",
    "select_image_features",
]
