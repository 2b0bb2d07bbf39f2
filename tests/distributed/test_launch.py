"""`--tensor-parallel-size`: the CLI re-runs itself under torchrun (2 gloo ranks here) and prints what one process
prints; rank 0 alone prints."""

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
