"""GlobalBatchShare: the ranks' batches put together are the 1-process loader's batches."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from epi_fast.app.dist_job import GlobalBatchShare


@pytest.mark.parametrize("n,batch,world", [(100, 16, 2), (1437, 64, 2), (96, 32, 4), (64, 32, 2), (10, 16, 2)])
def test_ranks_together_see_the_one_process_batches(n, batch, world):
    data = TensorDataset(torch.arange(n))
    one = DataLoader(data, batch_size=batch, shuffle=True, drop_last=n > batch,
                     generator=torch.Generator().manual_seed(3))
    ranks = []
    for r in range(world):
        gen = torch.Generator().manual_seed(3)
        sampler = GlobalBatchShare(n, batch, r, world, gen)
        ranks.append(DataLoader(data, batch_size=sampler.share, sampler=sampler, generator=gen))
    for epoch in range(3):  # the generator advances alike in every loader
        want = [b[0].tolist() for b in one]
        per_rank = [[b[0].tolist() for b in loader] for loader in ranks]
        assert len({len(p) for p in per_rank}) == 1 and len({len(b) for p in per_rank for b in p}) == 1
        glued = [sum((p[k] for p in per_rank), []) for k in range(len(per_rank[0]))]
        if n > batch:
            assert glued == want, epoch
        else:  # one partial batch: each rank an equal share of it
            assert len(glued) == 1 and glued[0] == want[0][:len(glued[0])]


def test_another_seed_another_order():
    a = list(GlobalBatchShare(50, 10, 0, 2, torch.Generator().manual_seed(0)))
    b = list(GlobalBatchShare(50, 10, 0, 2, torch.Generator().manual_seed(1)))
    assert sorted(a) != sorted(b) or a != b
    assert len(a) == len(GlobalBatchShare(50, 10, 0, 2, torch.Generator())) == 25
