"""A whole batch job: read the rows, skip those already in the results file, answer the rest locally or
on Ray, append each finished batch, and show rows/s and an ETA on stderr."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

from llavakit.batch.inputs import read_rows
from llavakit.batch.output import ResultWriter, done_ids
from llavakit.progress import ProgressLine


@dataclasses.dataclass
class JobSummary:
    total: int  # rows in the input
    skipped: int  # already in the results file
    written: int  # answered in this run (errors included)
    errors: int  # of those, rows recorded with an error
    seconds: float


class Progress:
    """One status line: rows done/total, rows/s and ETA (rewritten in place on a terminal)."""

    def __init__(self, total: int, disabled: bool) -> None:
        self.total, self.disabled, self.start, self.done = total, disabled, time.time(), 0
        self.line = ProgressLine()

    def advance(self, rows: int, errors: int) -> None:
        self.done += rows
        if self.disabled:
            return
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (f"rows {self.done}/{self.total} | {rate:.2f} rows/s | errors {errors} | "
                f"eta {int(eta) // 60}:{int(eta) % 60:02d}")
        self.line.show(line)

    def note(self, text: str) -> None:
        if not self.disabled:
            self.line.note(text)


def run_job(model: str, input_path: str, output_path: str, *, prompt: str | None = None,
            chat_template: str | None = None, max_new_tokens: int = 64, batch_size: int = 8,
            image_folder: str | None = None, dtype: str = "auto", device: str | None = None,
            ray_address: str | None = None, use_ray: bool = False, num_replicas: int = 1,
            gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0, progress: bool = True,
            tensor_parallel: bool = False, json_schema: dict | None = None,
            num_frames: int | None = None) -> JobSummary:
    """Answer every row of `input_path` not yet in `output_path`, appending one JSON line per row.

    `tensor_parallel`: this process is one rank of a torchrun group sharing one model; every rank runs the
    same batches, and rank 0 alone reads and writes the results file and shows progress.
    `json_schema`: constrain every answer to this JSON schema; each result also gets the parsed "json".
    `num_frames`: frames sampled evenly from each row's video (video models only; default DEFAULT_NUM_FRAMES).
    """
    from llavakit.batch.runner import DEFAULT_NUM_FRAMES, DEFAULT_PROMPT

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    num_frames = DEFAULT_NUM_FRAMES if num_frames is None else num_frames
    if num_frames < 1:
        raise ValueError(f"--num-frames must be >= 1, got {num_frames}")
    if Path(output_path).resolve() == Path(input_path).resolve():
        raise ValueError("--output must not be the input file")
    if tensor_parallel and use_ray:
        raise ValueError("--ray and --tensor-parallel-size exclude each other: on Ray, scale with --num-replicas")
    if json_schema is not None:
        check_schema(json_schema)
    start = time.time()
    main_rank = True
    rows = read_rows(input_path, image_folder)
    if tensor_parallel:  # rank 0 reads (and repairs) the results file; the others take its list of done ids
        from llavakit.distributed.setup import broadcast_object, init_distributed, rank

        init_distributed()
        main_rank = rank() == 0
        done = broadcast_object(done_ids(output_path) if main_rank else None)
    else:
        done = done_ids(output_path)
    todo = [row for row in rows if row["id"] not in done]
    skipped = len(rows) - len(todo)
    engine_kwargs: dict[str, Any] = dict(model=model, prompt=prompt or DEFAULT_PROMPT, chat_template=chat_template,
                                         max_new_tokens=max_new_tokens, dtype=dtype, device=device,
                                         tensor_parallel=tensor_parallel, json_schema=json_schema,
                                         num_frames=num_frames)
    bar = Progress(len(todo), disabled=not (progress and main_rank))
    if skipped:
        bar.note(f"resuming: {skipped} of {len(rows)} rows are already in {output_path}")
    written = errors = 0
    with ResultWriter(output_path) if main_rank else contextlib.nullcontext() as writer:
        for results in _batches(todo, engine_kwargs, batch_size, use_ray, ray_address, num_replicas,
                                gpus_per_replica, cpus_per_replica):
            if writer is not None:
                writer.write(results)
            written += len(results)
            errors += sum(r["error"] is not None for r in results)
            bar.advance(len(results), errors)
    bar.note(f"done: {written} rows written to {output_path} ({errors} with errors, {skipped} skipped)")
    return JobSummary(len(rows), skipped, written, errors, time.time() - start)


def check_schema(schema: Any) -> None:
    """Refuse a malformed or unsatisfiable JSON schema before any model is loaded."""
    import llguidance

    from llavakit.generation.structured import Constraint

    problem = llguidance.LLMatcher.validate_grammar(Constraint("json_schema", schema).grammar())
    if problem:
        raise ValueError(f"invalid JSON schema: {problem.strip().splitlines()[0]}")


def _batches(todo: list[dict[str, Any]], engine_kwargs: dict[str, Any], batch_size: int, use_ray: bool,
             ray_address: str | None, num_replicas: int, gpus_per_replica: float,
             cpus_per_replica: float) -> Iterator[list[dict[str, Any]]]:
    """Result batches in input order, from a local engine or from Ray."""
    if not todo:
        return
    if use_ray:
        from llavakit.batch.ray_runner import run_on_ray

        yield from run_on_ray(todo, engine_kwargs, batch_size=batch_size, num_replicas=num_replicas,
                              gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                              address=ray_address)
        return
    from llavakit.batch.runner import BatchEngine

    engine = BatchEngine(**engine_kwargs)
    for start in range(0, len(todo), batch_size):
        yield engine.run(todo[start:start + batch_size])
