"""`precision: auto` trains in bf16 only where the hardware runs it natively."""

from __future__ import annotations

import pytest
import torch

from groundlm.train import load_recipe
from groundlm.train import precision as P


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(P, "native_bf16", lambda: True)
    assert P.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(P, "native_bf16", lambda: False)
    assert P.resolve_precision("auto") == "fp32"
    assert P.resolve_precision("bf16") == "bf16"  # an explicit choice is kept, fast or not
    assert P.resolve_precision("fp32") == "fp32"


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(
        torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False}, raising=False
    )
    assert not P.native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    assert P.native_bf16()


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        P.resolve_precision("fp16")


def test_the_demo_recipe_picks_its_precision_per_machine():
    assert {s.precision for s in load_recipe("shapes").stages} == {"auto"}
