"""Weighted, deterministic, resumable mixtures."""

import pytest

from groundlm.data.mixture import Mixture, Source


def _mix(seed=0):
    return Mixture([Source("a", 10, 3.0), Source("b", 7, 1.0)], seed=seed, batch_size=4)


def test_same_seed_same_sequence_and_different_seed_differs():
    m1, m2, m3 = _mix(), _mix(), _mix(seed=1)
    s1 = [m1.next_batch() for _ in range(50)]
    assert s1 == [m2.next_batch() for _ in range(50)]
    assert s1 != [m3.next_batch() for _ in range(50)]


def test_ratios_are_respected():
    m = _mix()
    names = [m.next_batch()[0] for _ in range(4000)]
    share = names.count("a") / len(names)
    assert 0.72 < share < 0.78  # 3:1 → 0.75; binomial sd ≈ 0.007


def test_every_sample_once_per_epoch():
    m = Mixture([Source("only", 12)], batch_size=4)
    seen = [i for _ in range(3) for i in m.next_batch()[1]]
    assert sorted(seen) == list(range(12))
    second = [i for _ in range(3) for i in m.next_batch()[1]]
    assert sorted(second) == list(range(12)) and second != seen


def test_resume_from_state_continues_identically():
    full = _mix()
    stream = [full.next_batch() for _ in range(30)]
    first = _mix()
    for _ in range(13):
        first.next_batch()
    state = first.state_dict()
    resumed = _mix()
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(17)] == stream[13:]


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="empty"):
        Mixture([Source("a", 0)])
    with pytest.raises(ValueError, match="ratio"):
        Mixture([Source("a", 3, 0.0)])
    with pytest.raises(ValueError, match="unique"):
        Mixture([Source("a", 3), Source("a", 4)])
    with pytest.raises(ValueError, match="seed"):
        _mix().load_state_dict(_mix(seed=5).state_dict())
