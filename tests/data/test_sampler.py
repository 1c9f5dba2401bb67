"""GlobalBatchSampler and eval_shard: the batch stream, epoch coverage, sharding."""
import numpy as np
import pytest

from deeplab.data import GlobalBatchSampler, eval_shard


def _stream(sampler, epochs):
    """The (epoch, index) stream written out explicitly from the per-epoch permutations."""
    return [(e, int(i)) for e in range(epochs)
            for i in np.random.default_rng([sampler.seed, e]).permutation(sampler.num_samples)]


@pytest.mark.parametrize("num_samples,batch_size", [(10, 4), (12, 4), (3, 8), (1, 2), (7, 7)])
def test_batch_is_a_slice_of_the_stream(num_samples, batch_size):
    sampler = GlobalBatchSampler(num_samples, batch_size, seed=3)
    stream = _stream(sampler, epochs=40)
    for t in range(12):
        assert sampler.batch(t) == stream[t * batch_size:(t + 1) * batch_size]
    # Random access gives the same as sequential access (resuming at t replays nothing).
    fresh = GlobalBatchSampler(num_samples, batch_size, seed=3)
    assert fresh.batch(9) == sampler.batch(9)


def test_batch_straddling_epochs_keeps_each_elements_epoch():
    sampler = GlobalBatchSampler(10, 4, seed=0)
    batch = sampler.batch(2)  # stream elements 8..11: two from epoch 0, two from epoch 1
    assert [e for e, _ in batch] == [0, 0, 1, 1]


def test_each_epoch_visits_every_index_once():
    sampler = GlobalBatchSampler(10, 3, seed=1)
    pairs = [p for t in range(40) for p in sampler.batch(t)]  # 120 elements = 12 epochs
    for epoch in range(12):
        assert sorted(i for e, i in pairs if e == epoch) == list(range(10))
    orders = {tuple(i for e, i in pairs if e == epoch) for epoch in range(12)}
    assert len(orders) == 12  # reshuffled every epoch


def test_seed_changes_the_order_deterministically():
    a = [GlobalBatchSampler(50, 8, seed=0).batch(t) for t in range(3)]
    assert a == [GlobalBatchSampler(50, 8, seed=0).batch(t) for t in range(3)]
    assert a != [GlobalBatchSampler(50, 8, seed=1).batch(t) for t in range(3)]


def test_elements_are_python_ints():
    epoch, index = GlobalBatchSampler(5, 2, 0).batch(0)[0]
    assert type(epoch) is int and type(index) is int


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_shards_concatenate_to_the_batch(world_size):
    sampler = GlobalBatchSampler(13, 8, seed=0)
    for t in range(5):
        batch = sampler.batch(t)
        shards = [sampler.shard(batch, r, world_size) for r in range(world_size)]
        assert all(len(s) == 8 // world_size for s in shards)
        assert sum(shards, []) == batch


def test_world_size_must_divide_batch_size():
    sampler = GlobalBatchSampler(13, 8, seed=0)
    with pytest.raises(ValueError, match="train.batch_size"):
        sampler.shard(sampler.batch(0), 0, 3)
    with pytest.raises(ValueError, match="rank"):
        sampler.shard(sampler.batch(0), 2, 2)


@pytest.mark.parametrize("args", [(0, 4, 0), (10, 0, 0), (10, 4, -1), (10, 2.5, 0)])
def test_bad_constructor_arguments(args):
    with pytest.raises(ValueError):
        GlobalBatchSampler(*args)


@pytest.mark.parametrize("num_samples", [0, 1, 2, 7, 12])
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_eval_shard_covers_each_index_once(num_samples, world_size):
    shards = [eval_shard(num_samples, r, world_size) for r in range(world_size)]
    assert sum(shards, []) == list(range(num_samples))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_eval_shard_seven_over_three():
    assert [eval_shard(7, r, 3) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="rank"):
        eval_shard(7, 3, 3)
