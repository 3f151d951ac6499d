"""The lmms-eval model `groundlm`: `lmms-eval --model groundlm --model_args pretrained=DIR,device=cpu,batch_size=8`.

lmms-eval finds it through the `lmms_eval.models` entry point in groundlm's pyproject.toml (`manifest` below);
installing `groundlm[lmms]` is all it takes, lmms-eval itself is not edited. It is a "simple" model: lmms-eval
hands it `(context, gen_kwargs, doc_to_visual, doc_id, task, split)` per `generate_until` request and
`(context, continuation, doc_to_visual, doc_id, task, split)` per `loglikelihood` request; the work is done by
`harness.Harness` (batched through groundlm's decoding loop; boxes written as `[x1, y1, x2, y2]` in [0, 1] of the
original image, what `refcoco_bbox_rec` parses).

Model arguments: `pretrained` (a groundlm model directory), `device` (default cpu), `batch_size` (8),
`dtype` (float32, bfloat16, float16; default the checkpoint's), `max_new_tokens` (when a task sets none; 128),
`rec_prompt` (ask RefCOCO prompts in the model's own words, e.g. `[refer] give me the location of {}`; quote the
value if it holds a comma), `decimals` (4).

Several processes (`torchrun --nproc_per_node N -m lmms_eval ...`, or `accelerate launch` on GPUs): lmms-eval's
evaluator gives each rank its share of the documents and gathers the results; the model reports its `rank` and
`world_size` from accelerate, and each process loads the model on its own device (`cuda:LOCAL_RANK` when
`device=cuda`).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from ..inference import load
from .harness import Harness, Request, sampling_of

MODEL_ID = "groundlm"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def manifest():
    """The `lmms_eval.models` entry point: lmms-eval's manifest of this model (a simple model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.GroundLMEval")


def _flat(visuals) -> list:
    """A task's visuals (a list, possibly nested, possibly with None) as a flat list."""
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [v for item in visuals for v in _flat(item)]


class GroundLMEval(lmms):
    """A groundlm model directory evaluated by lmms-eval."""

    is_simple = True

    def __init__(
        self, pretrained: str, device: str = "cpu", batch_size: int | str = 8, dtype: str | None = None,
        max_new_tokens: int | str = 128, rec_prompt: str | None = None, decimals: int | str = 4, **unused,
    ) -> None:
        super().__init__()
        # lmms-eval adds its own settings (max_batch_size, ...) to every model's arguments
        unused.pop("max_batch_size", None)
        if unused:
            raise ValueError(f"--model groundlm: unknown model_args {sorted(unused)}; see {__name__}'s docstring")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"--model groundlm: batch_size must be a positive integer, got {batch_size!r}")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"--model groundlm: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        accelerator = Accelerator()
        if accelerator.num_processes > 1 and device == "cuda":
            device = f"cuda:{accelerator.local_process_index}"
        self.accelerator = accelerator
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        self._device = torch.device(device)
        self.max_new_tokens = int(max_new_tokens)
        lm = load(pretrained, device=device, dtype=_DTYPES.get(dtype) if dtype else None)
        self.harness = Harness(lm, batch_size=int(batch_size), rec_prompt=rec_prompt or None, decimals=int(decimals))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> GroundLMEval:
        """The model of `--model_args`. lmms-eval also passes its own `--batch_size` (default 1), `--device`
        and `--max_batch_size` to every model; a setting given in `--model_args` wins over those (lmms-eval's
        default would otherwise clash with `batch_size=N` in `--model_args`)."""
        from lmms_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        for key, value in (additional_config or {}).items():
            if value is not None and key not in args:
                args[key] = value
        return cls(**args)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.harness.batch_size

    def _image(self, doc_to_visual, doc_id, task: str, split: str):
        """The one image of a document (or None); several images are refused with the document named."""
        if doc_to_visual is None:
            return None
        visuals = _flat(doc_to_visual(self.task_dict[task][split][doc_id]))
        if len(visuals) > 1:
            raise ValueError(
                f"task {task} ({split}) document {doc_id} gives {len(visuals)} images; a groundlm model reads one"
            )
        return visuals[0] if visuals else None

    def generate_until(self, requests: list[Instance]) -> list[str]:
        asked = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            until = gen_kwargs.get("until") or ()
            asked.append(Request(
                self._image(doc_to_visual, doc_id, task, split), context,
                (until,) if isinstance(until, str) else tuple(until),
                int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens), sampling_of(gen_kwargs),
            ))
        with tqdm(total=len(asked), disable=self.rank != 0, desc="groundlm generate") as bar:
            return self.harness.generate(asked, on_batch=bar.update)

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request, (the continuation's negative log-likelihood, whether greedy decoding writes it).

        lmms-eval 0.7 picks a multiple-choice answer by `argmin` over these values (`api/task.py`: its own
        models return a loss), so groundlm's summed log-probability is returned negated. Its `acc_mutual_info`
        takes the `argmax` of conditional minus unconditional values, so with losses, as with lmms-eval's own
        models, that metric reads them in the opposite sense; `acc` and `acc_norm` are right. Each pair is
        wrapped in `GenerationResult`: the evaluator turns a bare tuple into its string before the metric
        reads it."""
        items = []
        for args in [r.args for r in requests]:
            if len(args) == 2:  # ("", choice): the unconditional requests of the acc_mutual_info metric
                items.append((None, args[0], str(args[1])))
                continue
            context, doc_to_target, doc_to_visual, doc_id, task, split = args
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            items.append((self._image(doc_to_visual, doc_id, task, split), context, str(continuation)))
        with tqdm(total=len(items), disable=self.rank != 0, desc="groundlm loglikelihood") as bar:
            scored = self.harness.loglikelihood(items, on_batch=bar.update)
        return [GenerationResult(text=(-logprob, greedy)) for logprob, greedy in scored]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(
            "groundlm's lmms-eval model answers single-turn tasks (generate_until, loglikelihood); multi-round "
            "tasks are not supported"
        )
