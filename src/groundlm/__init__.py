"""groundlm: grounded vision-language models, one language model for many vision-language tasks.

    import groundlm
    model = groundlm.load("path/to/model")
    answer = model.ask("photo.jpg", "[refer] the red circle")
"""

from .inference import Answer, Chat, GroundLM, load
from .location import GroundedObject

__version__ = "0.1.0"

__all__ = ["Answer", "Chat", "GroundLM", "GroundedObject", "load", "__version__"]
