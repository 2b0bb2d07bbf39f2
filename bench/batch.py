"""Batch-job throughput: `llavakit batch` locally vs on a local Ray instance with N replicas, same rows.

    python bench/batch.py [--rows 48] [--runs 3] [--batch-size 8] [--replicas 2] [--ray-cpus 2] [--new-tokens 16]

Rows are real photos (scikit-image) with varied prompts, answered by the tiny random LLaVA-1.5 the tests
use. Each run is a whole job into a fresh results file (model loading and, on Ray, actor start-up
included; Ray itself is started once, and its start-up time is printed apart). Local and Ray runs
alternate so drift in machine load hits both; medians of rows/s are reported, and the two results files
are checked to be identical. transformers has no batch runner, so there is no transformers contestant.
Needs the test extras (transformers and scikit-image build the checkpoint; ray[data]).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["What is in the image?", "Describe the scene in one sentence.", "What colours stand out?",
           "Is there a person in this picture?", "Name the main object."]


def build(folder: Path, n_rows: int) -> tuple[Path, Path]:
    """The tiny checkpoint and a JSONL of `n_rows` rows cycling over the photos and prompts."""
    from tests import assets

    model = assets.build_tiny_llava(folder / "model", assets.build_mistral_tokenizer(folder / "tok"))
    photos = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "horse.png"]
    rows = [{"id": f"row{i}", "image": str(assets.photos_dir() / photos[i % len(photos)]),
             "prompt": PROMPTS[i % len(PROMPTS)]} for i in range(n_rows)]
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs the local Ray instance may use")
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    import ray

    from llavakit.batch.job import run_job

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, data = build(folder, args.rows)
        start = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        print(f"ray start-up: {time.perf_counter() - start:.1f}s (not counted below)")
        options = dict(max_new_tokens=args.new_tokens, batch_size=args.batch_size, progress=False)
        rates: dict[str, list[float]] = {"local": [], "ray": []}
        files: dict[str, bytes] = {}
        for run in range(args.runs):
            for name in ("local", "ray"):
                out = folder / f"{name}-{run}.jsonl"
                extra = dict(use_ray=True, num_replicas=args.replicas) if name == "ray" else {}
                summary = run_job(str(model), str(data), str(out), **options, **extra)
                rates[name].append(summary.written / summary.seconds)
                files[name] = out.read_bytes()
                print(f"run {run} {name:5s}: {summary.written} rows in {summary.seconds:.1f}s = "
                      f"{rates[name][-1]:.2f} rows/s", flush=True)
        ray.shutdown()
    same = files["local"] == files["ray"]
    local, on_ray = statistics.median(rates["local"]), statistics.median(rates["ray"])
    print(f"\n{args.rows} rows, batch {args.batch_size}, {args.new_tokens} new tokens, {os.cpu_count()} CPUs "
          f"(torch threads locally: {__import__('torch').get_num_threads()})")
    print(f"local           : median {local:.2f} rows/s")
    print(f"ray x{args.replicas} replicas: median {on_ray:.2f} rows/s  (ray / local = {on_ray / local:.2f}x)")
    print(f"results identical: {same}")
    if not same:
        sys.exit("local and Ray results differ")


if __name__ == "__main__":
    main()
