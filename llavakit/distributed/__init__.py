"""Running one model over several processes: tensor parallelism (torchrun, gloo on CPU / nccl on GPU)."""

from llavakit.distributed.setup import init_distributed, is_distributed, rank, world_size
from llavakit.distributed.tensor_parallel import RowParallelLinear, shard_model

__all__ = ["RowParallelLinear", "init_distributed", "is_distributed", "rank", "shard_model", "world_size"]
