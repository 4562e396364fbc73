"""DomainSampler (proportions, without-replacement cycling, state) and PrefetchLoader.

These use a small fake reader that follows the CacheReader.read contract; the trainer tests use
real caches.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import torch
from ddk.cache.errors import ConfigError
from ddk.cache.train.sampler import DomainSampler, PrefetchLoader, read_plan


@dataclass
class FakeBatch:
    input_ids: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    tail_logmass: torch.Tensor


class FakeReader:
    """input_ids[b] = [domain_no, index, ...]; counts the read calls."""

    def __init__(self, domains, L=4, k=2, fail_after=None):
        self.domains, self.L, self.k = domains, L, k
        self.calls = 0
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def read(self, domain, split, indices):
        with self.lock:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise OSError("chunk unreadable")
        d = self.domains.index(domain)
        B = len(indices)
        ids = torch.zeros(B, self.L, dtype=torch.long)
        ids[:, 0] = d
        ids[:, 1] = torch.tensor(list(indices))
        return FakeBatch(ids, torch.zeros(B, self.L - 1, self.k, dtype=torch.long),
                         torch.full((B, self.L - 1, self.k), float(d)),
                         torch.full((B, self.L - 1), float(d)))


def test_domain_proportions_match_weights_chi_square():
    weights = [0.5, 0.3, 0.2]
    s = DomainSampler([50, 40, 30], weights, seed=0)
    n = 20000
    counts = torch.bincount(torch.tensor([d for d, _ in s.draw(n)]), minlength=3).double()
    expected = torch.tensor(weights, dtype=torch.float64) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # critical value of chi^2 with 2 degrees of freedom at p = 0.001 is 13.82
    assert chi2 < 13.82, (counts.tolist(), chi2)
    # and the test has power: the same counts are far from a uniform mixture
    uni = torch.full((3,), n / 3, dtype=torch.float64)
    assert float(((counts - uni) ** 2 / uni).sum()) > 100


def test_set_weights_changes_proportions_and_zero_weight_never_drawn():
    s = DomainSampler([10, 10], [0.5, 0.5], seed=1)
    s.set_weights([0.0, 2.0])  # normalised
    assert s.weights.tolist() == [0.0, 1.0]
    assert {d for d, _ in s.draw(500)} == {1}


def test_within_domain_without_replacement_and_reshuffled_cycles():
    s = DomainSampler([7], [1.0], seed=3)
    draws = [i for _, i in s.draw(21)]
    cycles = [draws[0:7], draws[7:14], draws[14:21]]
    for c in cycles:
        assert sorted(c) == list(range(7))  # each pass visits every sequence exactly once
    assert cycles[0] != cycles[1] or cycles[1] != cycles[2]  # fresh shuffle per pass
    assert s.epochs == [2]  # a pass is counted when the next one starts (lazily)


def test_streams_depend_on_seed_and_rank_and_are_reproducible():
    a = DomainSampler([20, 20], [0.5, 0.5], seed=0, rank=0).draw(50)
    assert a == DomainSampler([20, 20], [0.5, 0.5], seed=0, rank=0).draw(50)
    assert a != DomainSampler([20, 20], [0.5, 0.5], seed=0, rank=1).draw(50)
    assert a != DomainSampler([20, 20], [0.5, 0.5], seed=1, rank=0).draw(50)


def test_state_dict_round_trip_resumes_the_exact_stream():
    s = DomainSampler([13, 5, 9], [0.2, 0.5, 0.3], seed=7)
    s.draw(40)
    state = s.state_dict()
    expect = s.draw(60)
    t = DomainSampler([13, 5, 9], [1.0, 1.0, 1.0], seed=99)  # different seed/weights: overwritten
    t.load_state_dict(state)
    assert t.draw(60) == expect
    with pytest.raises(ConfigError, match="same cache"):
        DomainSampler([13, 5], [1, 1], seed=7).load_state_dict(state)


@pytest.mark.parametrize("sizes,weights", [([], []), ([3, 0], [1, 1]), ([3], [1, 1]),
                                           ([3, 3], [0, 0]), ([3, 3], [-1, 2])])
def test_bad_sampler_inputs(sizes, weights):
    with pytest.raises(ConfigError):
        DomainSampler(sizes, weights, seed=0)


def test_read_plan_keeps_draw_order_and_reads_once_per_domain():
    reader = FakeReader(["a", "b", "c"])
    plan = [(2, 5), (0, 1), (2, 0), (1, 3), (0, 4)]
    batch = read_plan(reader, ["a", "b", "c"], plan)
    assert reader.calls == 3
    assert batch.input_ids[:, :2].tolist() == [list(p) for p in plan]
    assert batch.domains.tolist() == [2, 0, 2, 1, 0]
    assert batch.tail_logmass[:, 0].tolist() == [2.0, 0.0, 2.0, 1.0, 0.0]
    assert batch.topk_ids.shape == (5, 3, 2) and batch.topk_ids.dtype == torch.long


def test_prefetch_loader_yields_the_sampler_stream_in_order():
    names = ["a", "b"]
    ref = DomainSampler([11, 6], [0.6, 0.4], seed=5)
    expect = [ref.draw(3) for _ in range(10)]
    s = DomainSampler([11, 6], [0.6, 0.4], seed=5)
    loader = PrefetchLoader(FakeReader(names), names, s, batch_size=3, num_batches=10, depth=2)
    got = [b.input_ids[:, :2].tolist() for b in loader]
    assert got == [[list(p) for p in plan] for plan in expect]
    assert s.state_dict()["pos"] == ref.state_dict()["pos"]  # sampler advanced exactly 10 batches
    with pytest.raises(StopIteration):
        next(loader)


def test_prefetch_loader_skip_fast_forwards_without_reading():
    names = ["a", "b"]
    ref = DomainSampler([11, 6], [0.6, 0.4], seed=5)
    expect = [ref.draw(3) for _ in range(8)][5:]
    reader = FakeReader(names)
    loader = PrefetchLoader(reader, names, DomainSampler([11, 6], [0.6, 0.4], seed=5),
                            batch_size=3, num_batches=8, skip=5)
    got = [b.input_ids[:, :2].tolist() for b in loader]
    assert got == [[list(p) for p in plan] for plan in expect]
    assert reader.calls <= 2 * 3  # only the 3 remaining batches were read


def test_prefetch_loader_reraises_reader_errors_and_closes_when_blocked():
    names = ["a"]
    loader = PrefetchLoader(FakeReader(names, fail_after=2), names,
                            DomainSampler([4], [1.0], seed=0), batch_size=2, num_batches=5)
    next(loader), next(loader)
    with pytest.raises(OSError, match="unreadable"):
        next(loader)
    # a loader whose consumer stops early: the thread is blocked on the full queue
    loader = PrefetchLoader(FakeReader(names), names, DomainSampler([4], [1.0], seed=0),
                            batch_size=2, num_batches=100, depth=1)
    next(loader)
    loader.close()
    assert not loader._thread.is_alive()
