"""`torchrun --nproc_per_node 2 -m groundlm eval` (2 CPU processes, gloo): the same predictions file (rows and
order) and metrics as one process, and `--resume` of a half-finished sharded run completes it; which files a
rank takes over on resume, and how batches are dealt (evaluate/shards.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import groundlm
from groundlm.evaluate.runner import EvalConfig, evaluate
from groundlm.evaluate.shards import Shards, part_file, part_files

from .train_helpers import ROOT, child_env

ARGS = ["--scenes", "2", "--batch-size", "4", "--max-new-tokens", "6"]  # 16 records: 4 batches, 2 per rank


@pytest.fixture(scope="module")
def one_process(tiny_dir, tmp_path_factory):
    """The one-process run (one thread, as each torchrun rank has): its folder."""
    torch.set_num_threads(1)  # conftest's module fixture restores the count
    out = tmp_path_factory.mktemp("eval") / "one"
    evaluate(groundlm.load(tiny_dir, device="cpu"), out, EvalConfig(scenes=2, batch_size=4, max_new_tokens=6))
    return out


def _torchrun_eval(model, out, *extra: str) -> str:
    """Run the sharded evaluation; its stderr (each rank says how many records it predicts)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "groundlm", "eval", str(model), *ARGS, "--device", "cpu", "--out", str(out), *extra]
    proc = subprocess.run(command, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("wrote ") == 1  # only rank 0 prints the table
    return proc.stderr


def test_two_processes_write_the_one_process_predictions_and_metrics(tiny_dir, one_process, tmp_path):
    out = tmp_path / "two"
    log = _torchrun_eval(tiny_dir, out)
    assert "rank 0 of 2: 8 records to predict" in log and "rank 1 of 2: 8 records to predict" in log
    expected = (one_process / "predictions.jsonl").read_text()
    assert len(expected.splitlines()) == 16
    assert (out / "predictions.jsonl").read_text() == expected  # same rows, same order, byte for byte
    assert json.loads((out / "metrics.json").read_text()) == json.loads((one_process / "metrics.json").read_text())
    assert part_files(out / "predictions.jsonl") == []  # the per-rank files are gone once merged


def test_resume_completes_a_half_finished_sharded_run(tiny_dir, one_process, tmp_path):
    lines = (one_process / "predictions.jsonl").read_text().splitlines()
    out = tmp_path / "resumed"
    out.mkdir()
    kept = json.loads(lines[0])
    kept["prediction"] = "KEPT: not predicted again"  # a row the interrupted rank 0 had written
    # rank 0 stopped after its first batch; rank 1 died writing the 4th row of its first batch
    part_file(out / "predictions.jsonl", 0).write_text("\n".join([json.dumps(kept), *lines[1:4]]) + "\n")
    part_file(out / "predictions.jsonl", 1).write_text("\n".join(lines[4:7]) + "\n" + lines[7][:25])
    log = _torchrun_eval(tiny_dir, out, "--resume")
    # 9 records left, as batches of 4, 4, 1: the first and third to rank 0, the second to rank 1
    assert "rank 0 of 2: 5 records to predict, 4 taken over" in log
    assert "rank 1 of 2: 4 records to predict, 3 taken over" in log
    rows = (out / "predictions.jsonl").read_text().splitlines()
    assert json.loads(rows[0]) == kept  # taken over, not regenerated
    assert rows[1:] == lines[1:]  # the cut row and the 8 never started are predicted, in record order
    assert part_files(out / "predictions.jsonl") == []


def test_a_rank_takes_over_its_own_part_and_those_of_a_bigger_interrupted_run(tmp_path):
    path = tmp_path / "predictions.jsonl"
    for k in range(4):  # an interrupted run of 4 processes, resumed with 2
        part_file(path, k).write_text("")
    path.write_text("")
    assert Shards(0, 2).files_to_read(path) == [part_file(path, 0), part_file(path, 2), path]
    assert Shards(1, 2).files_to_read(path) == [part_file(path, 1), part_file(path, 3)]
    assert Shards(0, 1).files_to_read(path) == [path, *(part_file(path, k) for k in range(4))]
    assert Shards(0, 1).own_file(path) == path and Shards(1, 2).own_file(path).name == "predictions.part1.jsonl"


def test_batches_are_dealt_round_robin_so_each_keeps_its_one_process_records():
    batches = [[0, 1], [2, 3], [4, 5], [6]]
    assert Shards(0, 2).deal(batches) == [[0, 1], [4, 5]]
    assert Shards(1, 2).deal(batches) == [[2, 3], [6]]
    assert Shards(2, 3).deal(batches) == [[4, 5]]


def test_one_process_resumes_a_sharded_run_and_removes_its_part_files(tiny_dir, one_process, tmp_path):
    lines = (one_process / "predictions.jsonl").read_text().splitlines()
    out = tmp_path / "one-after-two"
    out.mkdir()
    part_file(out / "predictions.jsonl", 0).write_text("\n".join(lines[:4]) + "\n")
    part_file(out / "predictions.jsonl", 1).write_text("\n".join(lines[4:8]) + "\n")
    lm = groundlm.load(tiny_dir, device="cpu")
    asked = []
    original = lm.ask_many
    lm.ask_many = lambda *a, **k: asked.append(len(a[1])) or original(*a, **k)
    evaluate(lm, out, EvalConfig(scenes=2, batch_size=4, max_new_tokens=6, resume=True))
    assert sum(asked) == 8  # only the records neither part file held
    assert (out / "predictions.jsonl").read_text().splitlines() == lines
    assert part_files(out / "predictions.jsonl") == []
