"""MemoryBank: FIFO order and wrap-around, only the filled part, no gradient, state_dict resume."""

from __future__ import annotations

import torch

from vlsearch.negatives import MemoryBank, gather_across_devices

DIM, BATCH = 3, 2


def batch(k: int, size: int = BATCH):
    """Batch k: ids k*10 .. k*10+size-1, vectors filled with the id, log_q = -id."""
    ids = torch.arange(size) + 10 * k
    return ids.float()[:, None].expand(size, DIM).clone(), ids, -ids.float()


def test_fifo_keeps_the_last_batches_in_order():
    bank = MemoryBank(size=3 * BATCH, dim=DIM)
    for k in range(5):
        bank.push(*batch(k))
    got = bank.negatives()
    assert len(bank) == 3 * BATCH and len(got) == 3 * BATCH
    assert got.product_ids.tolist() == [20, 21, 30, 31, 40, 41]  # oldest first
    assert torch.equal(got.vectors[:, 0], got.product_ids.float())
    assert torch.equal(got.log_q, -got.product_ids.float())


def test_partial_fill_empty_and_uneven_batches():
    bank = MemoryBank(size=5, dim=DIM)
    assert bank.negatives() is None and len(bank) == 0
    bank.push(*batch(0))
    assert bank.negatives().product_ids.tolist() == [0, 1]
    bank.push(*batch(1, size=3))
    bank.push(*batch(2, size=1))  # wraps around the end
    assert bank.negatives().product_ids.tolist() == [1, 10, 11, 12, 20]
    bank.push(*batch(3, size=7))  # larger than the bank: only its newest 5 survive
    assert bank.negatives().product_ids.tolist() == [32, 33, 34, 35, 36]


def test_no_gradient_and_returned_copies():
    bank = MemoryBank(size=4, dim=DIM)
    vectors = torch.ones(BATCH, DIM, requires_grad=True)
    bank.push(vectors * 2, torch.tensor([1, 2]), torch.zeros(BATCH))
    got = bank.negatives()
    assert not got.vectors.requires_grad and not any(b.requires_grad for b in bank.buffers())
    assert list(bank.parameters()) == []
    bank.push(*batch(5))  # a later push must not change what was handed out
    assert torch.equal(got.vectors, torch.full((BATCH, DIM), 2.0))


def test_state_dict_round_trip_continues_the_same_queue():
    bank = MemoryBank(size=3 * BATCH, dim=DIM)
    for k in range(4):
        bank.push(*batch(k))
    restored = MemoryBank(size=3 * BATCH, dim=DIM)
    restored.load_state_dict(bank.state_dict())
    assert len(restored) == len(bank)
    for k in (4, 5):
        bank.push(*batch(k))
        restored.push(*batch(k))
    a, b = bank.negatives(), restored.negatives()
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.product_ids, b.product_ids)
    assert a.product_ids.tolist() == [30, 31, 40, 41, 50, 51]


def test_gather_is_none_without_a_process_group():
    assert gather_across_devices(*batch(0)) is None
