"""Loading data pickles without running code.

A pickle is a small program: any global it names (``os.system``, ``subprocess.Popen``, ``builtins.eval``) is
imported and may be called while loading, so ``pickle.load`` on a downloaded file is remote code execution.
The refer API ships its expressions as such a pickle (``refs(unc).p``), which only needs plain data. This
unpickler refuses every global and every persistent id, so only the containers and scalars that the pickle
opcodes build by themselves can load: dict, list, tuple, str, bytes, int, float, bool and None (and sets
and Python-3 bytes from protocols that have opcodes for them; older protocols spell those with a global).

The refer pickles were written by Python 2, whose ``str`` is bytes. They are read with ``encoding="bytes"``
and every bytes value (keys included) is then decoded as UTF-8, falling back to Latin-1 for the odd byte
that is not UTF-8; decoding with Latin-1 up front would turn every accented UTF-8 word into mojibake.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain data (a global or a persistent id) and was refused."""


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that refuses every global, so loading can never import or call anything."""

    def __init__(self, file: Any, *, name: str = "<pickle>", **kwargs: Any):
        super().__init__(file, **kwargs)
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        """Refuse the global ``module.name``: plain data never needs one."""
        raise UnsafePickleError(
            f"{self._name}: the pickle asks for the global {module}.{name}; only plain data (dict, list, "
            "tuple, str, numbers, bool, None) is allowed, so it was refused and nothing was executed"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids, which only an application-specific loader could resolve."""
        raise UnsafePickleError(f"{self._name}: the pickle uses a persistent id {pid!r}; refused")


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def decode_bytes(value: Any) -> Any:
    """Return ``value`` with every bytes object inside (dict keys too) decoded to str (UTF-8, else Latin-1)."""
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, dict):
        return {decode_bytes(k): decode_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_bytes(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode_bytes(v) for v in value)
    if isinstance(value, set | frozenset):
        return type(value)(decode_bytes(v) for v in value)
    return value


def safe_load(source: str | os.PathLike | bytes) -> Any:
    """Load a pickle file (or the pickle ``bytes``) that may contain only plain data; refuse anything else.

    Raises ``UnsafePickleError`` (naming the file and the refused global) for a pickle that would import or
    call anything, and ``pickle.UnpicklingError`` naming the file for a corrupt one. Python-2 ``str`` values
    come back as ``str`` (see the module docstring).
    """
    if isinstance(source, bytes):
        name, data = "<bytes>", source
    else:
        name, data = str(source), Path(source).read_bytes()
    unpickler = RestrictedUnpickler(io.BytesIO(data), name=name, encoding="bytes")
    try:
        value = unpickler.load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
        raise pickle.UnpicklingError(f"{name}: not a readable pickle: {err}") from err
    return decode_bytes(value)
