"""`--tensor-parallel-size`: the CLI re-runs itself under torchrun (2 gloo ranks here) and prints or writes what
one process does; rank 0 alone prints and writes."""

import json
import shutil

from llavakit.cli.main import main


def test_generate_with_two_ranks_prints_the_single_process_answer(tiny_llava_dir, photos, capfd):
    command = ["generate", "--model", str(tiny_llava_dir), "--image", str(photos["chelsea"]), "--prompt",
               "What is this?", "--max-new-tokens", "8", "--no-stream"]
    assert main(command) == 0
    single = capfd.readouterr().out
    assert single.strip()
    assert main([*command, "--tensor-parallel-size", "2"]) == 0
    assert capfd.readouterr().out == single  # one copy of the answer, the same answer


def test_bad_sizes_say_so(tiny_llava_dir, capsys):
    assert main(["generate", "--model", str(tiny_llava_dir), "--image", "x.png", "--tensor-parallel-size", "0"]) == 2
    assert "--tensor-parallel-size must be at least 1" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_llava_dir), "--image", "x.png", "--tensor-parallel-size", "2",
                 "--device", "cpu"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_batch_with_two_ranks_writes_the_single_process_results(tiny_llava_dir, photos, tmp_path, capfd):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("chelsea", "rocket", "coffee"):
        shutil.copy(photos[name], folder / photos[name].name)
    (folder / "broken.png").write_bytes(b"not an image")

    def batch(out, *extra):
        return main(["batch", str(tiny_llava_dir), "--input", str(folder), "--output", str(out), "--prompt",
                     "Describe it.", "--max-new-tokens", "4", "--batch-size", "2", *extra])

    assert batch(tmp_path / "single.jsonl") == 0
    sharded = tmp_path / "sharded.jsonl"
    sharded.write_text((tmp_path / "single.jsonl").read_text().splitlines(keepends=True)[0])  # resume after row 1
    capfd.readouterr()
    assert batch(sharded, "--tensor-parallel-size", "2") == 0
    err = capfd.readouterr().err
    assert err.count("resuming: 1 of 4 rows") == 1  # rank 0 alone reports
    single = [json.loads(line) for line in (tmp_path / "single.jsonl").read_text().splitlines()]
    assert [json.loads(line) for line in sharded.read_text().splitlines()] == single  # each row once, same answers
    assert single[0]["error"] and all(r["answer"] for r in single[1:])


def test_batch_tensor_parallel_excludes_ray(tiny_llava_dir, tmp_path, capsys):
    assert main(["batch", str(tiny_llava_dir), "--input", str(tmp_path), "--output", str(tmp_path / "o.jsonl"),
                 "--tensor-parallel-size", "2", "--ray", "local"]) == 2
    assert "exclude each other" in capsys.readouterr().err
