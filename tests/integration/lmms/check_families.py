"""lmms-eval and VLMEvalKit score every backend family (Qwen2.5-VL, Florence-2, PaliGemma, Kosmos-2) exactly as
`groundlm eval` does (`make test-lmms`, after check_lmms.py and check_vlmevalkit.py).

Runs in `.venv-lmms`. For each family of tests/backend_models.py (together covering `backends.BACKENDS`):
1. the model (family_models.py): the tiny random checkpoint in the family's published layout, fine-tuned
   through groundlm's recipe path on ShapesWorld referring expressions for the families groundlm trains
   (Qwen2.5-VL, PaliGemma), random weights for the others (Florence-2, Kosmos-2);
2. lmms-eval, for real: `lmms-eval --model groundlm --model_args pretrained=DIR,...` on check_lmms.py's local
   RefCOCO-layout task (lmms-eval's own refcoco_bbox_rec prompt, parser and metrics), in one process and in two
   (`torchrun`, `--processes`), against `groundlm eval` of the same rows imported with `groundlm data import
   refcoco-lmms` (check_lmms.compare);
3. VLMEvalKit, for real: GroundLMVLM through VLMEvalKit's `BaseModel.generate`, each answer scored by
   `RefCOCODataset`'s own parse, scale guess and IoU, on check_vlmevalkit.py's TSV, against `groundlm eval` of
   the rows imported with `groundlm data import refcoco-vlmevalkit` (check_vlmevalkit.compare);
4. equal means, in both: the same rows; on every row the box the tool parsed is groundlm's first box as the
   plugin writes it (4 decimals), the tool's IoU of it is groundlm's of that box, within rounding groundlm
   eval's IoU, and the same hit; the same Acc@0.5 / Precision@1 and mean IoU. Every family is asked in its own
   prompt: the plugins' `rec_prompt` turns the tools' RefCOCO prompt into `[refer] ...`, which the family's
   processor asks in its own words, as `groundlm eval` does for the imported records.

What this proves and what not. For the fine-tuned families the answers are the family's format with a box on
nearly every row (the check fails when fewer than MIN_BOXED of the rows have one), so the tools and groundlm
are compared on continuous IoUs that differ row by row: the plugins hand the tools exactly groundlm's boxes,
through each family's own prompt, decoding, frame and codec, and the tools score them as groundlm does. The
hits are few (a 32-wide model with 4 image tokens learns the answer's format and a few rough positions, not to
find the object), so Acc@0.5 agrees mostly on misses. For the random families the whole path runs (loading,
the family's prompt, batched and sharded generation, parsing, the tools' scorers) and every row is compared the
same way, but their answers are noise: Florence-2's random `<loc_k>` runs parse into boxes that miss the target
(IoU 0), and Kosmos-2's random `<patch_index_k>` runs, outside any `<object>`, hold no box at all, so each row
compares [0, 0, 0, 0] with no box. Agreement there says the path works and the readings match (no location
markup leaks into the text the tools parse), not that a real answer of theirs is scored right; the family
codecs' reading of real answers is tested by tests/test_backends.py with scripted answers.
Exit codes: 0 equal, 1 a difference or a failure, 77 skipped (lmms-eval or VLMEvalKit not importable here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import check_lmms  # noqa: E402
import check_vlmevalkit  # noqa: E402
import family_models  # noqa: E402
from check_lmms import log  # noqa: E402

# Qwen2.5-VL's JSON answer is ~60 byte-level tokens in the tiny checkpoints (one token per character); the box
# comes first in every family's format, so this leaves room for it in all of them
MAX_NEW_TOKENS = 96
# a fine-tuned family must answer a box on at least this share of the rows, else its comparison is vacuous
MIN_BOXED = 0.8


def boxed_share(rows: list[dict]) -> float:
    """The share of groundlm eval's rows whose answer has a box."""
    return sum(bool(r["prediction_objects"]) for r in rows) / len(rows)


def check_family(family: str, base: Path, workdir: Path, parquet: Path, tasks: Path, tsv: Path,
                 tsv_rows: list[dict], processes: int, timeout: float) -> tuple[list[str], str]:
    """Both tools against groundlm eval for one family (`base`: its random checkpoint): the differences and a
    one-line summary."""
    model, how = family_models.family_model(family, base, workdir, timeout)
    here = workdir / family
    metrics, rows = check_lmms.groundlm_run(model, parquet, here, timeout, MAX_NEW_TOKENS)
    ours = metrics["refer"]
    lmms, samples = check_lmms.lmms_eval_run(model, tasks, here / "lmms-1", 1, timeout, MAX_NEW_TOKENS)
    problems = check_lmms.compare(lmms, samples, metrics, rows, f"{family}: lmms-eval")
    if processes > 1:  # the evaluator's sharding and gathering with the family's model
        lmms_n, samples_n = check_lmms.lmms_eval_run(model, tasks, here / f"lmms-{processes}", processes, timeout,
                                                     MAX_NEW_TOKENS)
        problems += check_lmms.compare(lmms_n, samples_n, metrics, rows, f"{family}: lmms-eval, {processes} processes")
    theirs = check_vlmevalkit.vlmevalkit_hits(model, tsv_rows, MAX_NEW_TOKENS)
    ours_v, predictions = check_vlmevalkit.groundlm_eval(model, tsv, here, timeout, MAX_NEW_TOKENS)
    problems += check_vlmevalkit.compare(theirs, ours_v, predictions, f"{family}: VLMEvalKit")
    boxed = boxed_share(rows)
    distinct = len({round(check_lmms.row_iou(r), 6) for r in rows})
    log(f"{family} ({how}): {100 * boxed:.0f}% of the answers hold a box, {distinct} distinct IoUs; e.g. "
        f"{rows[0]['prediction'][:120]!r}")
    if how == "fine-tuned" and boxed < MIN_BOXED:
        problems.append(f"{family}: only {100 * boxed:.0f}% of the fine-tuned model's answers hold a box (at least "
                        f"{100 * MIN_BOXED:.0f}% needed for a meaningful comparison); train it longer")
    precision, mean_iou = check_vlmevalkit.scores(theirs)
    summary = (f"{family} ({how}): lmms-eval Acc@0.5 {lmms['refcoco_ACC@0.5,none']:.4f} mean IoU "
               f"{lmms['refcoco_IoU,none']:.4f} | VLMEvalKit Precision@1 {precision:.2f} mean IoU {mean_iou:.4f} | "
               f"groundlm eval {ours['hits']}/{ours['total']} hits, mean IoU {ours['mean_iou']:.4f}; boxed "
               f"{100 * boxed:.0f}%, {distinct} distinct IoUs")
    return problems, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/test-lmms"),
                        help="the families' models and runs go to WORKDIR/families")
    parser.add_argument("--families", help="a comma-separated subset (default: every family)")
    parser.add_argument("--scenes", type=int, default=30, help="ShapesWorld val scenes (one expression each)")
    parser.add_argument("--processes", type=int, default=2,
                        help="also run lmms-eval with this many processes (torchrun), as check_lmms.py does")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    try:
        import lmms_eval  # noqa: F401
        import vlmeval.vlm.base  # noqa: F401
    except ImportError as err:
        log(f"SKIP: lmms-eval or VLMEvalKit cannot be imported in {sys.executable}: {err}")
        return 77
    every = family_models.families()
    chosen = every if not args.families else args.families.split(",")
    if set(chosen) - set(every):
        parser.error(f"--families: unknown {sorted(set(chosen) - set(every))}; the families are {every}")
    workdir = args.workdir.resolve() / "families"
    workdir.mkdir(parents=True, exist_ok=True)
    bases = {f: family_models.random_checkpoint(f, workdir / f / "random") for f in chosen}
    if not args.families:  # the whole run must reach every backend
        missing = family_models.uncovered(list(bases.values()))
        if missing:
            log(f"FAIL: no checkpoint of the backends {sorted(missing)} is built by tests/backend_models.py")
            return 1
    parquet = check_lmms.write_parquet(workdir, args.scenes)
    tasks = check_lmms.write_task(workdir, parquet)
    tsv, tsv_rows = check_vlmevalkit.write_tsv(workdir, args.scenes)
    problems, summaries = [], []
    for family in chosen:
        found, summary = check_family(family, bases[family], workdir, parquet, tasks, tsv, tsv_rows, args.processes,
                                      args.timeout)
        problems += found
        summaries.append(("FAIL " if found else "OK ") + summary)
    for p in problems:
        log("FAIL: " + p)
    for s in summaries:
        log(s)
    if not problems:
        log("OK: lmms-eval's refcoco_bbox_rec and VLMEvalKit's RefCOCO scorer give every family groundlm eval's "
            "box, IoU and hit on every row")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
