"""The multiple-choice part of check_lmms.py: lmms-eval's `acc` on a local `output_type: multiple_choice` task
(answered through the groundlm model's `loglikelihood`) against an independent scoring of the same rows.

- the data: ShapesWorld val scenes as a parquet file (`question_id, image, question, choices, answer`), one
  question per scene, "[vqa] what colour is the SHAPE?" about an object whose shape is unique in its scene, with
  four colours to choose from (the right one and three others, shuffled; `answer` is the right one's index);
- the task: a yaml written next to the file (`dataset_path: parquet`, `doc_to_visual` from shapes_mc_task.py,
  `doc_to_text: question`, `doc_to_choice: choices`, `doc_to_target: answer`) with lmms-eval's own metrics
  `acc` and `mcc` (the latter only because lmms-eval logs each row's `(gold, pred)` with it; its aggregation
  is called through shapes_mc_task.py so that lmms-eval does not bootstrap its standard error);
- the independent scoring: `groundlm.load` and, for every row and choice, one unbatched forward pass over the
  processor's prompt tokens followed by the tokens of `" " + choice` (lmms-eval's `target_delimiter`), summing
  the log-probabilities of the choice's tokens; the row's answer is the choice with the highest sum;
- equal means: the same number of rows, the same choice picked on every row, the same per-row `acc` and the
  same accuracy; each value lmms-eval received must also be that log-probability (within 1e-3).
"""

from __future__ import annotations

import ast
import io
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK = "groundlm_shapes_colour_mc"
DELIMITER = " "  # the yaml's target_delimiter: lmms-eval asks for the likelihood of DELIMITER + choice
N_CHOICES = 4
LL_TOLERANCE = 1e-3  # summed float32 log-probabilities of a batch of 4 (right-padded) against one row alone


def questions(scenes: int) -> list[dict]:
    """One colour question per ShapesWorld val scene that has an object of a shape no other object has."""
    from groundlm.data.shapes import ShapesConfig, png_bytes, scene_at

    config = ShapesConfig(image_size=64)
    rows = []
    for index in range(scenes):
        scene = scene_at("val", index, config)
        counts = {}
        for o in scene.objects:
            counts[o.shape] = counts.get(o.shape, 0) + 1
        unique = [o for o in scene.objects if counts[o.shape] == 1]
        if not unique:
            continue
        rng = random.Random(f"shapes-mc:{index}")
        target = rng.choice(unique)
        choices = [target.colour, *rng.sample([c for c in config.colours if c != target.colour], N_CHOICES - 1)]
        rng.shuffle(choices)
        rows.append({
            "question_id": f"shapes-val-{index}-colour-mc", "image": png_bytes(scene.image),
            "question": f"[vqa] what colour is the {target.shape}?", "choices": choices,
            "answer": choices.index(target.colour),
        })
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    from datasets import Dataset, Features, Image, Sequence, Value

    features = Features({"question_id": Value("string"), "image": Image(), "question": Value("string"),
                         "choices": Sequence(Value("string")), "answer": Value("int64")})
    data = {k: [r[k] if k != "image" else {"bytes": r[k], "path": None} for r in rows] for k in features}
    Dataset.from_dict(data, features=features).to_parquet(str(path))
    return path


def write_task(tasks: Path, parquet: Path) -> Path:
    """The local task: its yaml and the `doc_to_visual` module it names, in `tasks` (for --include_path)."""
    tasks.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "shapes_mc_task.py", tasks / "shapes_mc_task.py")
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {parquet}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_visual: !function shapes_mc_task.doc_to_visual\n"
        "doc_to_text: question\n"
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        f"target_delimiter: {json.dumps(DELIMITER)}\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: mcc\n    aggregation: !function shapes_mc_task.matthews\n    higher_is_better: true\n"
    )
    return tasks


def independent_scores(model: Path, rows: list[dict]) -> list[list[float]]:
    """log P(DELIMITER + choice | image, question) of every choice of every row, one plain forward pass each."""
    import torch
    from PIL import Image

    import groundlm

    lm = groundlm.load(str(model), device="cpu")
    processor, net = lm.processor, lm.model
    out = []
    with torch.no_grad():
        for row in rows:
            image = Image.open(io.BytesIO(row["image"])).convert("RGB")
            enc = processor.prompt(image, [{"role": "user", "content": row["question"]}])
            if enc.locations:
                raise SystemExit(f"FAIL: {model} encodes locations outside its text; this check scores text codecs")
            per_choice = []
            for choice in row["choices"]:
                cont = processor.tokenizer(DELIMITER + choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([enc.input_ids + cont])  # [1, T]
                logits = net(input_ids=ids, attention_mask=torch.ones_like(ids),
                             pixel_values=enc.pixel_values[None].to(net.dtype)).logits[0].float()  # [T, V]
                logprobs = torch.log_softmax(logits[len(enc.input_ids) - 1 : -1], dim=-1)  # predicts cont: [m, V]
                per_choice.append(logprobs.gather(1, torch.tensor(cont)[:, None]).sum().item())
            out.append(per_choice)
    return out


def _literal(value):
    """A logged value: lmms-eval writes what JSON cannot hold (tuples of numpy numbers) as its str()."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def lmms_eval_run(model: Path, tasks: Path, out: Path, run: Callable, timeout: float) -> tuple[dict, dict]:
    """lmms-eval's metrics of the task and its logged samples by doc_id."""
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(out.parent / "hf_datasets_cache")}
    done = run([sys.executable, "-m", "lmms_eval", "--model", "groundlm", "--model_args",
         f"pretrained={model},device=cpu,batch_size=4", "--tasks", TASK, "--include_path", str(tasks),
         "--batch_size", "4", "--output_path", str(out), "--log_samples"], timeout, env=env)
    results = sorted(out.rglob("*results*.json"), key=lambda p: p.stat().st_mtime)
    samples = sorted(out.rglob(f"*samples_{TASK}*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not results or not samples:
        # lmms-eval logs an error and exits 0 when, e.g., `--model groundlm` is not found
        hint = ""
        if "process_results" in done.stderr:
            hint = ("\nlmms-eval could not score the model's loglikelihood results: lmms-eval 0.7's evaluator passes "
                    "each result through unwrap_generation_output (lmms_eval/api/instance.py), which turns a "
                    "(float, bool) tuple into its str(), and multiple_choice's process_results cannot unpack that")
        raise SystemExit(f"FAIL: lmms-eval wrote no results or samples under {out}:\n{done.stderr[-3000:]}{hint}")
    metrics = json.loads(results[-1].read_text())["results"][TASK]
    by_doc = {}
    for line in samples[-1].read_text().splitlines():
        if line.strip():
            sample = json.loads(line)
            by_doc[int(sample["doc_id"])] = sample
    return metrics, by_doc


def check(model: Path, workdir: Path, scenes: int, run: Callable, log: Callable, timeout: float) -> list[str]:
    """Run the multiple-choice comparison; return the differences (empty when lmms-eval agrees)."""
    rows = questions(scenes)
    parquet = write_parquet(rows, workdir / "shapes_colour_mc.parquet")
    log(f"wrote {len(rows)} colour questions ({N_CHOICES} choices each) to {parquet}")
    tasks = write_task(workdir / "tasks-mc", parquet)
    started = time.monotonic()
    metrics, samples = lmms_eval_run(model, tasks, workdir / "lmms-mc", run, timeout)
    log(f"multiple choice: lmms-eval took {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    scores = independent_scores(model, rows)
    log(f"multiple choice: the independent scoring took {time.monotonic() - started:.0f} s")

    problems = []
    picks = [max(range(len(s)), key=s.__getitem__) for s in scores]
    hits = [int(p == r["answer"]) for p, r in zip(picks, rows, strict=True)]
    ours = sum(hits) / len(rows)
    acc = metrics.get("acc,none")
    log(f"multiple choice: lmms-eval acc {acc} over {len(samples)} rows; independent argmax accuracy {ours:.4f} "
        f"({sum(hits)}/{len(rows)}); chance {1 / N_CHOICES:.2f}")
    if len(samples) != len(rows):
        problems.append(f"multiple choice: lmms-eval logged {len(samples)} rows, the parquet file has {len(rows)}")
    if acc is None or abs(acc - ours) > 1e-12:
        problems.append(f"multiple choice: lmms-eval acc {acc} is not the independent accuracy {ours}")
    lowest, received_all = 0, []
    for doc_id, (row, score, pick, hit) in enumerate(zip(rows, scores, picks, hits, strict=True)):
        sample = samples.get(doc_id)
        if sample is None:
            problems.append(f"multiple choice: lmms-eval has no sample for row {doc_id} ({row['question_id']})")
            continue
        gold, pred = _literal(sample["mcc"])
        if int(gold) != row["answer"]:
            problems.append(f"multiple choice: row {doc_id}: lmms-eval's gold {gold} is not {row['answer']}")
        if int(pred) != pick or int(sample["acc"]) != hit:
            problems.append(f"multiple choice: row {doc_id} ({row['question']} {row['choices']}): lmms-eval picked "
                            f"{pred} (acc {sample['acc']}), the highest log-probability is {pick} (acc {hit}); "
                            f"log-probabilities {[round(s, 4) for s in score]}")
            lowest += int(pred) == min(range(len(score)), key=score.__getitem__)
        received = [float(_literal(r)[0]) for r in sample["filtered_resps"]]
        if len(received) != len(score):
            problems.append(f"multiple choice: row {doc_id}: lmms-eval received {len(received)} values for "
                            f"{len(score)} choices")
        received_all += list(zip(received, score, strict=False))
    if lowest:
        problems.append(f"multiple choice: on {lowest} rows lmms-eval picked the LEAST likely choice: lmms-eval "
                        "0.7's multiple_choice takes np.argmin of what loglikelihood returns (its own models "
                        "return a loss), not the argmax of a log-probability")
    # lmms-eval's own models return a loss (lower is better), lm-eval's a log-probability: either is one number
    # per choice, and every value lmms-eval received must be the independent one in the same convention
    for sign, name in ((1, "the log-probabilities"), (-1, "the negated log-probabilities (a loss)")):
        if received_all and all(abs(a - sign * b) <= LL_TOLERANCE for a, b in received_all):
            log(f"multiple choice: the {len(received_all)} values lmms-eval received are {name} of the independent "
                f"scoring within {LL_TOLERANCE}")
            break
    else:
        worst = max((min(abs(a - b), abs(a + b)) for a, b in received_all), default=float("nan"))
        problems.append(f"multiple choice: the values lmms-eval received are not the independent log-probabilities "
                        f"(nor their negation) within {LL_TOLERANCE}; largest difference {worst}")
    return problems
