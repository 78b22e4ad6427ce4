"""A real 2-process gloo run: init from torchrun's variables, CDNS gather (equal and unequal
batches), collectives, and QPM gradients compared with one process over the concatenated batch.

Workers write JSON results; the assertions run in the pytest process so failures read plainly.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlsearch.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    is_main,
)
from vlsearch.negatives import NegativeSet, gather_across_devices
from vlsearch.objectives import QueryProductMatching

WORLD = 2
DIM = 4
EQUAL = [(0, 3), (3, 6)]  # rows of the global batch held by each rank
UNEQUAL = [(0, 3), (3, 5)]  # the last batch of an epoch: 3 and 2 pairs
IDS = [10, 11, 12, 13, 10, 15]  # row 4 (rank 1) clicked the product of row 0 (rank 0)
TAU = 0.1


def global_batch():
    """The same data in every process: L2-normalised q, p, catalog ids and log Q(p)."""
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, DIM, generator=gen), dim=-1)
    p = F.normalize(torch.randn(6, DIM, generator=gen), dim=-1)
    log_q = torch.log(torch.rand(6, generator=gen) * 0.5 + 0.01)
    return q, p, torch.tensor(IDS), log_q


def qpm():
    return QueryProductMatching(init_temperature=TAU, logq_correction=True, cross_device_weight=1.0)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    info = init_distributed(device="cpu")
    result = {"info": [info.rank, info.world_size, info.local_rank, info.backend, str(info.device)]}
    result["is_main"] = is_main()
    try:
        q_all, p_all, ids, log_q = global_batch()
        lo, hi = EQUAL[rank]
        got = gather_across_devices(p_all[lo:hi], ids[lo:hi], log_q[lo:hi])
        result["equal"] = {k: getattr(got, k).tolist() for k in ("vectors", "product_ids", "log_q")}

        lo, hi = UNEQUAL[rank]
        q = q_all[lo:hi].clone().requires_grad_(True)
        p = p_all[lo:hi].clone().requires_grad_(True)
        cross = gather_across_devices(p, ids[lo:hi], log_q[lo:hi])
        out = qpm()(q, p, ids[lo:hi], log_q[lo:hi], cross_device=cross)
        out.loss.backward()
        result["unequal"] = {
            "cross_ids": cross.product_ids.tolist(),
            "cross_requires_grad": cross.vectors.requires_grad,
            "loss": out.loss.item(),
            "q_grad": q.grad.tolist(),
            "p_grad": p.grad.tolist(),
            "neg_cross_device": out.neg_cross_device,
        }
        result["mean"] = all_reduce_mean(torch.tensor([float(rank), 10.0])).tolist()
        result["broadcast"] = broadcast_object({"seed": 13, "run": "a"} if rank == 0 else None)
        barrier()
    finally:
        cleanup()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.timeout(120)
def test_init_and_collectives(ranks):
    for r, result in enumerate(ranks):
        assert result["info"] == [r, WORLD, r, "gloo", "cpu"]
        assert result["is_main"] == (r == 0)
        assert result["mean"] == [0.5, 10.0]
        assert result["broadcast"] == {"seed": 13, "run": "a"}


def test_cdns_gathers_the_other_ranks_batch(ranks):
    _, p_all, ids, log_q = global_batch()
    for r, result in enumerate(ranks):
        lo, hi = EQUAL[1 - r]  # own rank excluded: B in-batch + B gathered = world * B products
        got = result["equal"]
        assert torch.allclose(torch.tensor(got["vectors"]), p_all[lo:hi])
        assert got["product_ids"] == ids[lo:hi].tolist()
        assert torch.allclose(torch.tensor(got["log_q"]), log_q[lo:hi])
    # unequal batches: rank 0 sees rank 1's 2 products, rank 1 sees rank 0's 3, padding trimmed
    assert ranks[0]["unequal"]["cross_ids"] == IDS[3:5]
    assert ranks[1]["unequal"]["cross_ids"] == IDS[0:3]
    assert not any(result["unequal"]["cross_requires_grad"] for result in ranks)
    # rank 1's query for product 10 does not count rank 0's copy of product 10 as a negative
    assert ranks[1]["unequal"]["neg_cross_device"] == pytest.approx((3 + 2) / 2)


def test_query_gradients_match_one_process_over_the_concatenated_batch(ranks):
    """One process, all 5 products in-batch (weight 1), mean over 5 queries. Rank r's loss is a
    mean over its own B_r queries with the other rank's products as cross-device negatives
    (beta = 1), so its per-query terms are identical: query gradients agree once scaled by
    B_r / 5. Product gradients do not: in one process p_j also receives gradient from the other
    rank's queries, while across devices the gathered copies are detached, so p_j only hears
    from its own rank. Detaching the other rank's products in the reference recovers them."""
    q_all, p_all, ids, log_q = global_batch()
    total = sum(hi - lo for lo, hi in UNEQUAL)
    q = q_all[:total].clone().requires_grad_(True)
    p = p_all[:total].clone().requires_grad_(True)
    reference = qpm()(q, p, ids[:total], log_q[:total]).loss
    reference.backward()

    p_detached = p_all[:total].clone().requires_grad_(True)
    partial = 0.0
    for r, (lo, hi) in enumerate(UNEQUAL):
        olo, ohi = UNEQUAL[1 - r]
        cross = NegativeSet(p_detached[olo:ohi].detach(), ids[olo:ohi], log_q[olo:ohi])
        out = qpm()(q_all[lo:hi], p_detached[lo:hi], ids[lo:hi], log_q[lo:hi], cross_device=cross)
        partial = partial + out.loss * (hi - lo) / total
    partial.backward()

    weighted = sum(res["unequal"]["loss"] * (hi - lo) for res, (lo, hi) in zip(ranks, UNEQUAL))
    assert weighted / total == pytest.approx(reference.item(), abs=1e-6)
    for res, (lo, hi) in zip(ranks, UNEQUAL):
        scale = (hi - lo) / total
        q_grad = torch.tensor(res["unequal"]["q_grad"]) * scale
        p_grad = torch.tensor(res["unequal"]["p_grad"]) * scale
        assert torch.allclose(q_grad, q.grad[lo:hi], atol=1e-6)
        assert not torch.allclose(p_grad, p.grad[lo:hi], atol=1e-4)
        assert torch.allclose(p_grad, p_detached.grad[lo:hi], atol=1e-6)


def test_single_process_without_torchrun_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert is_main() and broadcast_object([1, 2]) == [1, 2]
    assert all_reduce_mean(torch.tensor(3.0)).item() == 3.0
    barrier()
    cleanup()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: no process group needed
    assert init_distributed(device="cpu").world_size == 1
