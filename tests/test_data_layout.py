"""The rank/worker split itself, over many shapes: exactly once, equal batches, wrap only to pad."""

import itertools
import random

import pytest

from train.data.layout import plan_epoch


def consume(counts, world, workers, batch, drop_last, epoch=0):
    """What every worker of every rank reads when no sample is bad: (rank, batches, samples)."""
    out = []
    for rank in range(world):
        layout, plans = plan_epoch(counts, epoch=epoch, seed=1, rank=rank, world_size=world, num_workers=workers,
                                   batch_size=batch, drop_last=drop_last, shuffle=True, resampled=False,
                                   samples_per_epoch=None)  # fmt: skip
        samples = []
        for plan in plans:
            need = sum(plan.batch_sizes)
            for seg in plan.segments:
                take = min(need, len(seg))
                samples += [(seg.unit, seg.start + i, seg.wrap) for i in range(take)]
                need -= take
                if need == 0:
                    break
        out.append((layout.batches_per_rank, sum(len(p.batch_sizes) for p in plans), samples))
    return out


rng = random.Random(0)
SHAPES = [([rng.randint(0, 40) for _ in range(rng.randint(1, 9))], w, nw, b)
          for w, nw, b in itertools.product((1, 2, 3, 8), (1, 2, 3), (1, 4, 7))]  # fmt: skip
SHAPES = [s for s in SHAPES if sum(s[0]) >= s[1]]  # the loader refuses fewer samples than ranks


@pytest.mark.parametrize("counts,world,workers,batch", SHAPES)
def test_split_is_exact(counts, world, workers, batch):
    total = sum(counts)
    train = consume(counts, world, workers, batch, drop_last=True)
    assert len({n for n, _, _ in train}) == 1  # same batch count on every rank
    assert all(n == nb for n, nb, _ in train)
    seen = [s[:2] for _, _, samples in train for s in samples]
    assert not any(s[2] for _, _, samples in train for s in samples)  # no padding needed
    assert len(seen) == len(set(seen)) == train[0][0] * batch * world

    evals = consume(counts, world, workers, batch, drop_last=False)
    assert len({n for n, _, _ in evals}) == 1
    real = [s[:2] for _, _, samples in evals for s in samples if not s[2]]
    assert len(real) == len(set(real)) == total
    padded = sum(s[2] for _, _, samples in evals for s in samples)
    assert padded == -(-total // world) * world - total
