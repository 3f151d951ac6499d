"""The evaluation report: REC per expression kind, best examples that scored, the referent drawn apart."""

import numpy as np
from PIL import Image

from groundlm.data.shapes import write_shapes
from groundlm.evaluate.report import write_report
from groundlm.evaluate.scoring import row_score, score_predictions
from groundlm.visualize import FAINT

from .test_eval_runner import _oracle_rows


def _miss(row: dict) -> dict:
    return {**row, "prediction": "", "prediction_text": "", "prediction_objects": []}


def test_rec_is_scored_per_expression_kind():
    refer = [r for r in _oracle_rows(12) if r["task"] == "refer"]
    kinds = [r["meta"]["kind"] for r in refer]
    assert set(kinds) == {"attribute", "relation", "superlative"}
    # every relation expression missed: that kind scores 0, the others 1
    rows = [_miss(r) if r["meta"]["kind"] == "relation" else r for r in refer]
    m = score_predictions(rows, captions=False)["refer"]
    assert m["by_kind"]["relation"] == {"score": 0.0, "hits": 0, "total": kinds.count("relation")}
    assert m["by_kind"]["attribute"]["score"] == 1.0 and m["by_kind"]["superlative"]["score"] == 1.0
    assert m["hits"] == sum(k["hits"] for k in m["by_kind"].values())
    # records without a kind (another benchmark) get no split
    plain = [{**r, "meta": {"task": "refer"}} for r in refer]
    assert "by_kind" not in score_predictions(plain, captions=False)["refer"]


def test_best_examples_never_list_a_score_of_zero(tmp_path):
    rows = _oracle_rows(6)
    refer = [r for r in rows if r["task"] == "refer"]
    vqa = [_miss(r) for r in rows if r["task"] == "vqa"]  # nothing right
    rows = [refer[0], *[_miss(r) for r in refer[1:]], *vqa]
    metrics = score_predictions(rows, captions=False)
    text = write_report(rows, metrics, tmp_path, image_root=None).read_text()
    refer_part = text.split("## refer")[1].split("## ")[0]
    best = refer_part.split("**best**")[1].split("**worst**")[0]
    assert f"`{refer[0]['id']}` score 0.9" in best and "score 0.00" not in best  # 0.95: the boxes in bins
    vqa_part = text.split("## vqa")[1]
    assert "none: no prediction of this task scored above 0" in vqa_part.split("**worst**")[0]
    assert "score 0.00" in vqa_part.split("**worst**")[1]  # the worst still show the misses
    assert "| refer: attribute |" in text


def test_the_referent_is_drawn_apart_from_the_other_objects(tmp_path):
    write_shapes(tmp_path / "data", 4, "test", progress=False)
    rows = [r for r in _oracle_rows(4) if r["task"] == "refer" and len(r["objects"]) > 1]
    row = _miss(rows[0])  # no prediction drawn: only the ground truth
    write_report([row], score_predictions([row], captions=False), tmp_path, image_root=tmp_path / "data")
    report = (tmp_path / "report.md").read_text()
    assert "thin grey, the scene's other objects" in report
    picture = np.asarray(Image.open(tmp_path / "examples" / f"refer-worst-{row['id']}.png").convert("RGB"))
    k = picture.shape[0] // 64  # the picture is the 64 px scene enlarged k times
    target = int(row["reference"][5:-1])

    def bottom_edge(box):  # the colours along the box's bottom line (the top one carries the label)
        x1, _, x2, y2 = (round(v * k) for v in box)
        return {tuple(int(c) for c in px) for px in picture[y2, x1 + 2 : x2 - 2]}

    assert bottom_edge(row["objects"][target]["box"]) == {(255, 255, 255)}
    others = [o for i, o in enumerate(row["objects"]) if i != target]
    assert others and all(bottom_edge(o["box"]) == {FAINT} for o in others)
    assert row_score(row) == 0.0
