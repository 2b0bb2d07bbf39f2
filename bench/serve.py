"""Server throughput: `llavakit serve` vs `transformers serve --continuous-batching`, same checkpoint, same load.

    python bench/serve.py [--requests 32] [--concurrency 8] [--new-tokens 32] [--rounds 1] [--image] [--device cpu]

Both servers load the same random-weight LLaVA-1.5 checkpoint (bench/generate.py's: CLIP 224/14 and an
8-layer, 512-wide Llama) and get the same streamed greedy chat requests (varied prompts, optionally with a
photo as a data URL), `--concurrency` at a time. Each server runs alone, after one warm-up request; with
--rounds R each server is started R times, in alternating order so drift in machine load hits both, and the
round with the median requests/s is reported. Reported per server: requests/s, output tokens/s, mean and p50
time to first token, p50 and p99 request latency, and how many answers were identical between the two (greedy
on the same weights should give the same text).
Needs the test extras (transformers with its serving extra: fastapi, uvicorn; scikit-image).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generate import build_checkpoint  # noqa: E402
from tests.http import free_port  # noqa: E402

PROMPTS = ["Describe the scene.", "What colours stand out?", "Tell me a story about this.", "Name the main object.",
           "Is there a person in this picture?", "Write a short poem.", "What happens next?", "Count to ten."]


def start(kind: str, model: Path, port: int, device: str, max_batch: int) -> subprocess.Popen:
    if kind == "llavakit":
        command = [sys.executable, "-m", "llavakit", "serve", str(model), "--port", str(port), "--device", device,
                   "--max-batch-size", str(max_batch)]
    else:
        command = ["transformers", "serve", str(model), "--continuous-batching", "--port", str(port),
                   "--host", "127.0.0.1", "--device", device, "--log-level", "warning"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError("the server did not come up")


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """Stream one chat completion; times to first content and to the end, output tokens, text."""
    start = time.perf_counter()
    first, text, tokens, chunks = None, "", None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text += piece
                    chunks += 1
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens if tokens else chunks,
            "text": text}


async def drive(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[dict]]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def limited(body: dict) -> dict:
            async with gate:
                return await one_request(client, url, body)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(b) for b in bodies))
        return time.perf_counter() - start, results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--image", action="store_true", help="send a photo with every request")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from tests.assets import photos_dir

    with tempfile.TemporaryDirectory() as tmp:
        model = build_checkpoint(Path(tmp))
        photo = "data:image/png;base64," + base64.b64encode((photos_dir() / "chelsea.png").read_bytes()).decode()
        bodies = []
        for i in range(args.requests):
            content: list[dict] = [{"type": "text", "text": PROMPTS[i % len(PROMPTS)]}]
            if args.image:
                content.insert(0, {"type": "image_url", "image_url": {"url": photo}})
            bodies.append({"model": str(model), "messages": [{"role": "user", "content": content}],
                           "max_tokens": args.new_tokens, "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}})
        runs: dict[str, list[tuple[float, list[dict]]]] = {"llavakit": [], "transformers": []}
        for round_ in range(args.rounds):
            order = ["llavakit", "transformers"] if round_ % 2 == 0 else ["transformers", "llavakit"]
            for kind in order:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                proc = start(kind, model, port, args.device, args.concurrency)
                try:
                    wait_ready(proc, url)
                    asyncio.run(drive(url, bodies[:1], 1))  # warm-up
                    runs[kind].append(asyncio.run(drive(url, bodies, args.concurrency)))
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
        rows, texts = {}, {}
        for kind, measured in runs.items():
            measured.sort(key=lambda run: run[0])
            seconds, results = measured[len(measured) // 2]  # the median round
            tokens = sum(r["tokens"] for r in results)
            ttfts, latencies = [r["ttft"] for r in results], [r["latency"] for r in results]
            rows[kind] = [f"{len(results) / seconds:.2f}", f"{tokens / seconds:.1f}",
                          f"{statistics.mean(ttfts) * 1000:.0f}", f"{percentile(ttfts, 0.5) * 1000:.0f}",
                          f"{percentile(latencies, 0.5):.2f}", f"{percentile(latencies, 0.99):.2f}", str(tokens)]
            texts[kind] = [r["text"] for r in results]
        same = sum(a == b for a, b in zip(texts["llavakit"], texts["transformers"]))
    print(f"\n{args.requests} streamed chat requests, {args.concurrency} at a time, max {args.new_tokens} new tokens, "
          f"{'with' if args.image else 'without'} an image, device {args.device}, {os.cpu_count()} CPUs, "
          f"{args.rounds} round(s), load average {os.getloadavg()[0]:.1f}; "
          f"identical answers: {same}/{args.requests}\n")
    print("| server | requests/s | output tokens/s | mean TTFT (ms) | p50 TTFT (ms) | p50 latency (s) | "
          "p99 latency (s) | output tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, row in rows.items():
        name = "llavakit serve" if kind == "llavakit" else "transformers serve --continuous-batching"
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
