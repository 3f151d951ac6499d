"""Records → samples with the raise / skip-and-count policy for bad input."""

import pytest
from PIL import Image

from groundlm.data.dataset import RecordDataset, SampleError
from groundlm.presets import get_preset
from groundlm.records import GroundTruthObject, Message, Record, write_jsonl
from groundlm.train.build import scratch_processor


@pytest.fixture(scope="module")
def proc():
    return scratch_processor(get_preset("tiny"))


def _rec(rid, image="img.png", box=(10, 10, 30, 30), answer="<box:0>"):
    return Record(rid, image, [GroundTruthObject(box, "red circle")],
                  [Message("user", "[refer] the red circle"), Message("assistant", answer)])


@pytest.fixture()
def folder(tmp_path):
    Image.new("RGB", (64, 48), (0, 0, 0)).save(tmp_path / "img.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nonsense")
    return tmp_path


def test_good_records_encode_with_their_image(folder, proc):
    write_jsonl(folder / "r.jsonl", [_rec("a")])
    ds = RecordDataset(folder / "r.jsonl", proc)
    s = ds[0]
    assert s.pixel_values.shape == (3, 64, 64) and s.meta["id"] == "a"
    assert any(label != -100 for label in s.labels)


@pytest.mark.parametrize(
    ("record", "reason", "needle"),
    [
        (_rec("missing", image="nope.png"), "bad image", "nope.png"),
        (_rec("unreadable", image="broken.png"), "bad image", "broken.png"),
        (_rec("outside", box=(10, 10, 90, 30)), "box outside image", r"objects\[0\]\.box"),
        (_rec("empty", answer=" "), "bad conversation", "empty assistant answer"),
    ],
)
def test_bad_samples_raise_naming_the_record_or_are_skipped_and_counted(folder, proc, record, reason, needle):
    ds = RecordDataset([record], proc, image_root=folder)
    with pytest.raises(SampleError, match=needle) as err:
        ds[0]
    assert record.id in str(err.value) and err.value.reason == reason
    skipping = RecordDataset([record, _rec("good")], proc, image_root=folder, on_error="skip")
    assert skipping[0].meta["id"] == "good"
    assert skipping.report.skipped == {reason: 1} and skipping.report.loaded == 1
    assert reason in skipping.report.summary()


def test_negative_size_box_is_refused(folder, proc):
    bad = _rec("neg")
    bad.objects[0].box = (30, 10, 10, 30)
    with pytest.raises(SampleError, match="negative size"):
        RecordDataset([bad], proc, image_root=folder)[0]


def test_all_bad_is_an_error_even_when_skipping(folder, proc):
    ds = RecordDataset([_rec("x", image="nope.png")], proc, image_root=folder, on_error="skip")
    with pytest.raises(SampleError, match="every record failed"):
        ds[0]
