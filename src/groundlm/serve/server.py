"""Running the server: load a model, build the app, serve it with uvicorn (on 127.0.0.1 unless told)."""

from __future__ import annotations

import ipaddress
import logging
import os

from .api import create_app, env_api_key
from .limits import Limits

log = logging.getLogger("groundlm.serve")


def run(
    model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, *,
    name: str | None = None, limits: Limits | None = None, ui: bool = True, device: str = "auto",
    dtype: str = "auto", num_threads: int | None = None, log_level: str = "info",
) -> None:
    """Serve the model at `model_path` on `host:port` until interrupted.

    `device` and `dtype` are `groundlm.load`'s (devices.py: auto = a CUDA GPU when there is one, else the CPU;
    the checkpoint's dtype). `api_key` (or env `GROUNDLM_API_KEY` when None) protects `/v1/...` and the page. `num_threads` sets
    torch's CPU threads (default: torch's choice). Binding to anything but loopback without an API key logs a
    warning: the server then answers anyone who can reach the port.
    """
    import torch
    import uvicorn

    from ..inference import load

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    key = api_key if api_key is not None else env_api_key()
    if not key and not _is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach port %d can use the model",
                    host, port)
    lm = load(model_path, device=device, dtype=dtype)
    app = create_app(lm, name=name, api_key=key or None, limits=limits, ui=ui)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
