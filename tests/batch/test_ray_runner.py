"""The Ray Data path on a local 2-CPU Ray instance: the same file as a local run, and the same resume."""

from __future__ import annotations

import json

import pytest

from llavakit.batch.job import run_job

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("ray-input")
    names = ["astronaut", "chelsea", "coffee", "rocket", "horse", "camera"]
    lines = [{"id": f"r{i}", "image": str(photos[n]), "prompt": f"What is in picture {i}?"}
             for i, n in enumerate(names)]
    lines.insert(3, {"id": "bad", "image": "no-such-file.png"})
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def local_result(tiny_llava_dir, rows_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out.jsonl"
    run_job(str(tiny_llava_dir), str(rows_file), str(out), max_new_tokens=6, batch_size=3, progress=False)
    return out.read_bytes()


def test_ray_equals_local(ray_session, tiny_llava_dir, rows_file, local_result, tmp_path):
    out = tmp_path / "ray.jsonl"
    summary = run_job(str(tiny_llava_dir), str(rows_file), str(out), max_new_tokens=6, batch_size=2,
                      use_ray=True, num_replicas=2, progress=False)
    assert (summary.written, summary.errors) == (7, 1)
    assert out.read_bytes() == local_result


def test_ray_resumes_a_killed_run(ray_session, tiny_llava_dir, rows_file, local_result, tmp_path):
    out = tmp_path / "ray.jsonl"
    lines = local_result.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:4]) + lines[4][:20])  # four rows done, the fifth torn
    summary = run_job(str(tiny_llava_dir), str(rows_file), str(out), max_new_tokens=6, batch_size=2,
                      use_ray=True, num_replicas=2, progress=False)
    assert (summary.skipped, summary.written) == (4, 3)
    assert out.read_bytes() == local_result
