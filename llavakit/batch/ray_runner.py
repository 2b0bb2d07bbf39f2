"""The same batch job on Ray Data: rows -> map_batches over an actor pool of BatchEngines -> the driver,
which appends each batch to the results file as Ray yields it (so resuming works as in a local run).

Rows travel as JSON strings (one column), so Arrow never has to guess a type for an all-null column.
Ray is imported only here, and only when a job asks for it.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np


class _EngineActor:
    """One replica: a BatchEngine built once per actor, called with a batch of JSON rows."""

    def __init__(self, engine_kwargs: dict[str, Any]) -> None:
        from llavakit.batch.runner import BatchEngine

        self.engine = BatchEngine(**engine_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [json.loads(text) for text in batch["row"]]
        results = self.engine.run(rows)
        return {"result": np.array([json.dumps(r, ensure_ascii=False) for r in results], dtype=object)}


def connect(address: str | None) -> None:
    """Join a Ray cluster: "local" starts a new local instance, "auto" or ray://host:port joins one,
    None follows Ray's own rules (RAY_ADDRESS, else a running local cluster, else a new one)."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address)


def run_on_ray(rows: list[dict[str, Any]], engine_kwargs: dict[str, Any], *, batch_size: int,
               num_replicas: int = 1, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
               address: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Yield result batches (lists of result dicts) in input order as the actor pool finishes them."""
    if num_replicas < 1:
        raise ValueError(f"--num-replicas must be >= 1, got {num_replicas}")
    if not rows:
        return
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError('--ray needs Ray Data: pip install "llavakit[ray]" (or "ray[data]")') from None
    connect(address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # same file order as a local run
    context.enable_progress_bars = False  # the job prints its own progress line
    dataset = ray.data.from_items([{"row": json.dumps(row)} for row in rows],
                                  override_num_blocks=max(1, -(-len(rows) // batch_size)))
    dataset = dataset.map_batches(
        _EngineActor, fn_constructor_kwargs={"engine_kwargs": engine_kwargs}, batch_size=batch_size,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=num_replicas),
        num_cpus=cpus_per_replica, num_gpus=gpus_per_replica or None)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield [json.loads(text) for text in batch["result"]]

