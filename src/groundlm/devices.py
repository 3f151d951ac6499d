"""Where a loaded model runs and in which precision: the `device` and `dtype` names of `groundlm.load` and of
`groundlm ask / eval / serve --device / --dtype`, turned into torch's objects with a clear error up front.

Devices: `auto` (a CUDA GPU when torch sees one, else the CPU), `cpu`, `cuda`, `cuda:N`, `mps`. `auto` never
picks Apple's `mps`: it is used only when named, because its operator coverage still varies between torch
releases and nothing here can check it (these tests run on CPU only). Under `torchrun` (`LOCAL_RANK` set)
`auto` and a bare `cuda` mean the process's own GPU, `cuda:LOCAL_RANK`, so every rank of a sharded
evaluation takes a different one.

Dtypes: `auto` (the checkpoint's own dtype, as written in its config.json), `float32`, `bfloat16`, `float16`.
"""

from __future__ import annotations

import os

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",  # transformers' from_pretrained reads the checkpoint's dtype
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class PlacementError(ValueError):
    """A device or dtype that cannot be used here; `option` names the setting ("device" or "dtype")."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device called `name` (see the module docstring), or a `PlacementError` saying why it cannot
    be used on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return _local_cuda() if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise PlacementError("device", "device 'mps' asked for, but this machine has no usable Apple MPS "
                                           "backend; use device 'cpu' (or 'auto')")
        return torch.device("mps")
    kind, sep, index = text.partition(":")
    if kind != "cuda" or (sep and not index.isdigit()):
        raise PlacementError("device", f"unknown device {name!r}; choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise PlacementError(
            "device", f"device {name!r} asked for, but torch sees no CUDA GPU here ({build}, torch "
                      f"{torch.__version__}); use device 'cpu', or 'auto' to take a GPU only when there is one"
        )
    if not sep:
        return _local_cuda()
    count = torch.cuda.device_count()
    if int(index) >= count:
        raise PlacementError("device", f"device {name!r} asked for, but torch sees {count} CUDA GPU(s) "
                                       f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", int(index))


def _local_cuda() -> torch.device:
    """This process's GPU: `cuda:LOCAL_RANK` under torchrun, else `cuda:0`."""
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if rank >= count:
        raise PlacementError("device", f"LOCAL_RANK is {rank} but torch sees only {count} CUDA GPU(s): start "
                                       "at most one process per GPU")
    return torch.device("cuda", rank)


def resolve_dtype(name: str | torch.dtype | None = "auto") -> torch.dtype | str:
    """The dtype to load weights in: a torch dtype, or "auto" (the checkpoint's). None means "auto"."""
    if name is None:
        return "auto"
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise PlacementError("dtype", f"unsupported dtype {name}; choose one of {', '.join(DTYPES)}")
        return name
    text = str(name).strip().lower()
    if text not in DTYPES:
        raise PlacementError("dtype", f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[text]


__all__ = ["DEVICE_CHOICES", "DTYPES", "PlacementError", "resolve_device", "resolve_dtype"]
