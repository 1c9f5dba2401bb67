"""Everything distributed sits behind this package: collectives, trainers for the local /
Horovod / parameter-server backends, synchronized batch normalization and the stall watchdog.

`comm` works unchanged in a single process (rank 0 of 1); the engine calls only these functions,
`trainer` for the trainer and its state, and `runtime` to start a worker for a config.
"""
from .comm import (BACKENDS, allreduce_sum, backend, barrier, broadcast, broadcast_parameters,
                   context, contexts, exit_after_failure, gather_rows, init, is_main, local_rank,
                   nd_allgather, nd_allreduce_sum, network_failure, on_main, rank,
                   resolve_backend, shutdown, size, stall_hint, transport, use_transport)
from .syncbn import configure_sync_bn, sync_bn_group
from .trainer import DistTrainer, make_trainer
from .watchdog import EXIT_STALLED, Watchdog, watched_command
