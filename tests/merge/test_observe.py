"""merge/core.observe: the one hook every merge-decision recorder subscribes to."""

import pytest
import torch

from edgemerge.merge import core


def decide(metric, r=3):
    src, dst = core.alternating(metric.shape[1])
    return core.bipartite_match(metric, r, src, dst)


def test_observers_compose_and_see_every_call():
    metric = torch.randn(1, 10, 4)
    outer, inner = [], []
    with core.observe(outer.append):
        decide(metric, r=0)  # nothing merges: still an event, with no slot
        with core.observe(inner.append):
            decide(metric)
    assert [e.count for e in outer] == [0, 3] and [e.count for e in inner] == [3]
    assert outer[0].slot is None and outer[1].slot is not None and outer[1].capacity == 5
    decide(metric)
    assert len(outer) == 2 and not core._observers  # unsubscribed on exit


def test_an_observer_is_removed_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with core.observe(lambda e: None):
            raise RuntimeError
    assert not core._observers


def test_replay_reports_pytorchs_own_decision_beside_the_used_one():
    metric = torch.randn(1, 10, 4)
    own = decide(metric).slot
    other = own.flip(1).clone()
    with core.record_decisions() as recorded, core.replay_decisions([other]):
        used = decide(metric).slot
    assert torch.equal(used, other.to(torch.int32)) and torch.equal(recorded[0], own)
