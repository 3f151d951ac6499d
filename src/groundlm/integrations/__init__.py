"""groundlm models inside the field's evaluation tools (docs/evaluation.md, "lmms-eval and VLMEvalKit").

- `harness.py`: what both tools ask of a model, in plain Python (no tool imported): answer prompts about
  images in batches through `GroundLM.generate`, write the grounded objects as `[x1, y1, x2, y2]` in [0, 1] of
  the original image, score a continuation's log-likelihood, and recognise the RefCOCO prompt both tools use.
- `lmms_eval.py`: the lmms-eval model (`lmms-eval --model groundlm`), registered through the
  `lmms_eval.models` entry point of pyproject.toml; imports lmms-eval (`pip install groundlm[lmms]`).
- `vlmevalkit.py`: the VLMEvalKit model class (`generate_inner(message, dataset)`) and its config entry.

Only `harness.py` is imported by groundlm itself; the other two are loaded by the tools.
"""
