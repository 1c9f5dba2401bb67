"""Deterministic global batches for training and an exact split of the val set across workers.

Training sees one infinite stream of (epoch, index) pairs: epoch e contributes a permutation of
all sample indices drawn from `np.random.default_rng([seed, e])`, and global batch t is the
elements [t*B, (t+1)*B) of the stream. Every rank computes the same global batch and takes its
contiguous slice, so the union of the ranks' work at iteration t is independent of the number of
workers, and training can resume at any t without replaying earlier batches.
"""
import numbers

import numpy as np

from deeplab.errors import ConfigError


def _check_int(value, name, minimum):
    if not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError("%s must be an integer >= %d, got %r" % (name, minimum, value))
    return int(value)


class GlobalBatchSampler:
    """The global batch stream described in the module docstring.

    Args:
        num_samples: dataset size (> 0).
        batch_size: global batch size B, summed over all ranks (config `train.batch_size`).
        seed: shuffling seed.
    """

    def __init__(self, num_samples, batch_size, seed):
        self.num_samples = _check_int(num_samples, "num_samples", 1)
        self.batch_size = _check_int(batch_size, "train.batch_size", 1)
        self.seed = _check_int(seed, "seed", 0)
        self._cached_epoch, self._cached_perm = None, None

    def permutation(self, epoch):
        """The order in which epoch `epoch` visits the sample indices (an int64 array)."""
        epoch = _check_int(epoch, "epoch", 0)
        if epoch != self._cached_epoch:  # consecutive batches nearly always share an epoch
            self._cached_perm = np.random.default_rng([self.seed, epoch]).permutation(
                self.num_samples)
            self._cached_epoch = epoch
        return self._cached_perm

    def batch(self, t):
        """Global batch `t` as a list of B (epoch, index) pairs of Python ints.

        A batch may straddle epochs (or span several when B > num_samples); each element carries
        the epoch whose permutation it came from.
        """
        t = _check_int(t, "iteration", 0)
        start, stop = t * self.batch_size, (t + 1) * self.batch_size
        pairs = []
        while start < stop:
            epoch, offset = divmod(start, self.num_samples)
            take = min(stop - start, self.num_samples - offset)
            pairs.extend((epoch, int(i)) for i in self.permutation(epoch)[offset:offset + take])
            start += take
        return pairs

    def shard(self, batch, rank, world_size):
        """Returns rank `rank`'s contiguous slice of `batch` (B / world_size elements).

        Raises:
            ValueError: world_size does not divide the batch size, or rank is out of range.
        """
        world_size = _check_int(world_size, "world_size", 1)
        rank = _check_int(rank, "rank", 0)
        if rank >= world_size:
            raise ValueError("rank %d is out of range for world_size %d" % (rank, world_size))
        if len(batch) % world_size:
            raise ConfigError("train.batch_size (%d, the global batch) must be divisible by the "
                             "number of workers (%d)" % (len(batch), world_size))
        per_rank = len(batch) // world_size
        return list(batch[rank * per_rank:(rank + 1) * per_rank])


def eval_shard(num_samples, rank, world_size):
    """Rank `rank`'s contiguous share of range(num_samples), without padding or duplicates.

    The first `num_samples % world_size` ranks get one sample more; the shards of all ranks,
    concatenated in rank order, are exactly range(num_samples).
    """
    num_samples = _check_int(num_samples, "num_samples", 0)
    world_size = _check_int(world_size, "world_size", 1)
    rank = _check_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError("rank %d is out of range for world_size %d" % (rank, world_size))
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))
