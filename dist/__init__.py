"""Everything distributed sits behind this package: collectives and the trainer for a backend.

`comm` works unchanged in a single process (rank 0 of 1); the engine calls only these functions.
"""
from .comm import (allreduce_sum, barrier, broadcast, context, init, is_main, local_rank,
                   make_trainer, rank, size)
