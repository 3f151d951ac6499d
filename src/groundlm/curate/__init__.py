"""`groundlm curate`: instruction and grounded-chat data written by a pluggable LLM (docs/curation.md).

One pipeline per published data recipe, each a module with one class behind the `Pipeline` interface
(pipeline.py), its prompts and few-shot examples as data files in prompts/<name>/ (prompts.py):

- `minigpt4-detail` (minigpt4_detail.py): MiniGPT-4 stage 2: a groundlm model describes, an LLM corrects, rules filter;
- `llava-instruct` (llava_instruct.py): LLaVA-Instruct: conversations, detailed descriptions and complex reasoning
  from captions and boxes;
- `gvc` (gvc.py): LLaVA-Grounding's grounded visual chat: phrases of captions and conversations tied to boxes.

The pieces they share: the sources (subjects.py), the OpenAI-compatible client with retries (client.py), the
describer of the images (describers.py), the request cache (cache.py), validation helpers (answers.py), the
session that asks through all of them (session.py), the image as text (symbolic.py) and the runner (run.py).
"""

from .cache import Cache, request_key
from .client import Backoff, Completion, Endpoint, EndpointError, LLMClient, RequestFailed
from .describers import Described, Describer, LocalDescriber, ServedDescriber
from .gvc import GroundedChat
from .llava_instruct import LlavaInstruct
from .minigpt4_detail import MiniGPT4Detail
from .pipeline import Pipeline
from .prompts import PromptError, PromptSet, shipped
from .run import Interrupted, curate_subjects, write_records
from .session import Session, Settings, Skip, Tally
from .subjects import Subject, read_subjects

PIPELINES: dict[str, type] = {
    "minigpt4-detail": MiniGPT4Detail,
    "llava-instruct": LlavaInstruct,
    "gvc": GroundedChat,
}

__all__ = [
    "PIPELINES",
    "Backoff",
    "Cache",
    "Completion",
    "Described",
    "Describer",
    "Endpoint",
    "EndpointError",
    "GroundedChat",
    "Interrupted",
    "LLMClient",
    "LlavaInstruct",
    "LocalDescriber",
    "MiniGPT4Detail",
    "Pipeline",
    "PromptError",
    "PromptSet",
    "RequestFailed",
    "ServedDescriber",
    "Session",
    "Settings",
    "Skip",
    "Subject",
    "Tally",
    "curate_subjects",
    "read_subjects",
    "request_key",
    "shipped",
    "write_records",
]
