"""Exporters: records → the files other training frameworks read (docs/data-format.md, "Import and export").

One module per target, all with the interface of ``base.Exporter`` (``row``, ``extra_files``, ``file_name``,
``options``); ``write_export`` runs one over records into an output folder. ``EXPORTERS`` maps the CLI's
format names to the constructors:

- ``swift``          ms-swift JSONL, ``<ref-object>``/``<bbox>`` placeholders + real-pixel ``objects`` (``swift``)
- ``llama-factory``  LLaMA-Factory ShareGPT JSON + ``dataset_info.json``, boxes in a codec, default
  ``qwen2_5_vl`` (``llama_factory``)
- ``llava``          LLaVA ``conversations`` JSON, boxes in a codec, default ``llava`` (``llava``)
- ``qwen2_5_vl``     qwen-vl-finetune JSON, boxes as ``bbox_2d`` pixels of the original or smart-resized image
  (``qwen2_5_vl``)

``locations`` holds how slots are written (codec, frame, pixels, ``smart_resize``).
"""

from collections.abc import Callable

from .base import Exporter, ExportError, ExportReport, RecordError, write_export
from .llama_factory import LlamaFactoryExporter
from .llava import LlavaExporter
from .locations import Locations, smart_resize
from .qwen2_5_vl import Qwen25VLExporter
from .swift import SwiftExporter

EXPORTERS: dict[str, Callable[..., Exporter]] = {
    "swift": SwiftExporter,
    "llama-factory": LlamaFactoryExporter,
    "llava": LlavaExporter,
    "qwen2_5_vl": Qwen25VLExporter,
}

__all__ = [
    "EXPORTERS",
    "ExportError",
    "ExportReport",
    "Exporter",
    "LlamaFactoryExporter",
    "LlavaExporter",
    "Locations",
    "Qwen25VLExporter",
    "RecordError",
    "SwiftExporter",
    "smart_resize",
    "write_export",
]
