"""Issue 19: each command run as a new user runs it (`python -m llavakit ...` in a subprocess), on the built-in
demo model where the command allows, and the tiny checkpoints of other families where it matters."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llavakit import demo

pytestmark = pytest.mark.skipif(not demo.has_trained_model(), reason="the trained demo model is not shipped")


def llavakit(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 180,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llavakit", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> None:
    """Exit status 2 and a single `llavakit CMD: error: ...` line naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"llavakit {command}: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    """A LLaVA-format file of three questions about the demo's own example picture."""
    folder = tmp_path_factory.mktemp("shapes")
    shutil.copy(demo.EXAMPLE_IMAGE, folder / "example.png")
    records = [{"id": f"r{i}", "image": "example.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat shape is inside the red box?"}, {"from": "gpt", "value": "square"}]}
        for i in range(3)]
    (folder / "data.json").write_text(json.dumps(records))
    return folder


# 1. generate loads any family (it used to hard-code the LLaVA class)

@pytest.mark.parametrize("fixture", ["tiny_llava_next_dir", "tiny_vipllava_dir"])
def test_generate_runs_next_and_vip_checkpoints(request, fixture, photos):
    result = llavakit("generate", "--model", request.getfixturevalue(fixture), "--image", photos["chelsea"],
                      "--max-new-tokens", "3", "--no-stream")
    assert result.returncode == 0, result.stderr
    assert "cannot load" not in result.stderr


# 2. one way to name the model; merge takes what the README shows; an adapter is not a model

def test_chat_serve_and_batch_take_dash_dash_model_and_default_to_the_demo(shapes_data, tmp_path):
    chat = llavakit("chat", "--model", "demo", "--image", demo.EXAMPLE_IMAGE,
                    stdin="What shape is inside the red box?\n")
    assert chat.returncode == 0, chat.stderr
    assert "assistant> square" in chat.stdout
    out = tmp_path / "results.jsonl"
    batch = llavakit("batch", "--input", shapes_data / "data.json", "--output", out, "--no-progress")
    assert batch.returncode == 0, batch.stderr
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == ["square"] * 3


def test_the_model_named_twice_differently_is_refused(tmp_path):
    one_line_error(llavakit("chat", "demo", "--model", str(tmp_path)), "chat", "named twice")


def test_train_lora_then_merge_as_the_readme_shows(shapes_data, tmp_path):
    pytest.importorskip("peft")
    adapter, merged = tmp_path / "out", tmp_path / "merged"
    trained = llavakit("train", "--data", shapes_data / "data.json", "--image-folder", shapes_data, "--output-dir",
                       adapter, "--stage", "lora", "--lora-r", "2", "--lora-alpha", "4", "--max-steps", "1", "--quiet")
    assert trained.returncode == 0, trained.stderr
    # the adapter alone is not a model: the error says what to do
    one_line_error(llavakit("generate", "--model", adapter), "generate", "LoRA adapter", "llavakit merge")
    merge = llavakit("merge", adapter, merged)  # the README's `llavakit merge out merged`
    assert merge.returncode == 0, merge.stderr
    answer = llavakit("generate", "--model", merged, "--image", demo.EXAMPLE_IMAGE, "--no-stream",
                      "--prompt", "What shape is inside the red box?")
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr


# 3. chat's default max tokens no longer overflows the demo's 256-token context

def test_chat_default_max_tokens_fits_the_demo_context():
    result = llavakit("chat", "--image", demo.EXAMPLE_IMAGE, stdin="What is in the image?\nAnd the colour of the "
                      "circle?\n/help\n")
    assert result.returncode == 0, result.stderr
    assert "exceeds" not in result.stdout and "error" not in result.stdout
    assert result.stdout.count("assistant> ") == 2 and "/image PATH" in result.stdout.split("assistant> ")[-1]


# 4. Ctrl-C, missing optional packages, bad ports: one line, no traceback

def _wait_for(proc: subprocess.Popen, stream, text: str, timeout_s: float) -> str:
    """Read the binary pipe `stream` until `text` shows up (or the process ends / time runs out)."""
    seen, deadline = b"", time.time() + timeout_s
    while text.encode() not in seen and time.time() < deadline and proc.poll() is None:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            seen += os.read(stream.fileno(), 65536)
    return seen.decode(errors="replace")


def test_ctrl_c_at_the_chat_prompt_leaves_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "llavakit", "chat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "you> " in _wait_for(proc, proc.stdout, "you> ", 120)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_ctrl_c_stops_batch_quietly_and_a_rerun_resumes(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        shutil.copy(demo.EXAMPLE_IMAGE, folder / f"{i:02d}.png")
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "llavakit", "batch", "--input", str(folder), "--output", str(out),
               "--batch-size", "1", "--max-new-tokens", "24"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = _wait_for(proc, proc.stderr, "rows 2/", 120)  # a couple of rows are written
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = seen + err.decode()
    assert "Traceback" not in err, err
    assert proc.returncode == 130 and "interrupted" in err
    done = len(out.read_text().splitlines())
    assert 2 <= done < 40
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} of 40 rows are already in" in rerun.stderr
    assert len(out.read_text().splitlines()) == 40


def _without(tmp_path: Path, package: str) -> dict:
    """The environment with `package` unimportable, as on a machine where it is not installed."""
    shim = tmp_path / f"no-{package}"
    (shim / package).mkdir(parents=True)
    (shim / package / "__init__.py").write_text(f"raise ImportError(\"No module named '{package}'\")\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}


def test_missing_peft_is_one_line_before_any_model_loads(shapes_data, tmp_path):
    env = _without(tmp_path, "peft")
    result = llavakit("train", "--model", tmp_path / "no-such-model", "--data", shapes_data / "data.json",
                      "--output-dir", tmp_path / "out", "--stage", "lora", env=env)
    one_line_error(result, "train", "needs peft", "pip install")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    one_line_error(llavakit("merge", tmp_path / "adapter", tmp_path / "merged", env=env), "merge", "needs peft")


def test_missing_bitsandbytes_is_one_line(tmp_path):
    result = llavakit("generate", "--quantize", "nf4", "--max-new-tokens", "2", env=_without(tmp_path, "bitsandbytes"))
    one_line_error(result, "generate", "needs bitsandbytes", "pip install")


def test_serve_refuses_an_impossible_port():
    pytest.importorskip("uvicorn")
    one_line_error(llavakit("serve", "--port", "80000"), "serve", "--port must be between 1 and 65535")


def test_serve_on_a_busy_port_fails_before_saying_it_serves():
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = llavakit("serve", "--port", str(busy.getsockname()[1]))
    one_line_error(result, "serve", "cannot listen on 127.0.0.1", "in use")
    assert "serving" not in result.stderr


# 5. an unknown --chat-template name is refused with the built-in names

@pytest.mark.parametrize("command", ["generate", "chat", "batch"])
def test_unknown_template_name_lists_the_built_in_ones(command, tmp_path):
    extra = ["--input", demo.EXAMPLE_IMAGE, "--output", str(tmp_path / "o.jsonl")] if command == "batch" else []
    result = llavakit(command, "--chat-template", "nosuch", *extra, stdin="")
    one_line_error(result, command, "unknown chat template 'nosuch'", "llava", "mistral", "chatml")


# 6. train: nothing to learn fails; a missing data file fails before the model loads

def test_train_with_nothing_learnable_fails_and_saves_nothing(tmp_path):
    records = [{"id": "a", "conversations": [{"from": "human", "value": "Hello?"}]}]  # no answer to learn
    (tmp_path / "data.json").write_text(json.dumps(records))
    result = llavakit("train", "--data", tmp_path / "data.json", "--output-dir", tmp_path / "out", "--quiet")
    one_line_error(result, "train", "no trainable samples", "no assistant turn")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_train_checks_the_data_file_before_loading_the_model(tmp_path):
    result = llavakit("train", "--model", tmp_path / "no-such-model", "--data", tmp_path / "missing.json",
                      "--output-dir", tmp_path / "out")
    one_line_error(result, "train", "missing.json")


# 9. eval-mc: a missing image spoils only its row, which is named and recorded

def test_eval_mc_records_a_missing_image_and_goes_on(tmp_path):
    shutil.copy(demo.EXAMPLE_IMAGE, tmp_path / "example.png")
    rows = [{"id": "ok1", "image": "example.png", "question": "What shape is inside the red box?",
             "options": ["circle", "square", "triangle"], "answer": "square"},
            {"id": "lost", "image": "gone.png", "question": "What shape is inside the red box?",
             "options": ["circle", "square"], "answer": 1},
            {"id": "ok2", "image": "example.png", "question": "What color is the circle?",
             "options": ["red", "green", "blue"], "answer": "red"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "preds.jsonl"
    result = llavakit("eval-mc", "--data", tmp_path / "rows.jsonl", "--image-folder", tmp_path, "--output", out,
                      "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "row lost:" in result.stderr and "gone.png" in result.stderr
    written = {p["id"]: p for p in map(json.loads, out.read_text().splitlines())}
    assert set(written) == {"ok1", "lost", "ok2"}
    assert "gone.png" in written["lost"]["error"] and "prediction" not in written["lost"]
    assert written["ok1"]["prediction_text"] == "square" and written["ok2"]["prediction_text"] == "red"
    assert "accuracy: 1.0000 (2/2)" in result.stdout


# --version, --help with defaults, start-up

def test_version_and_help_show_what_users_look_for():
    from llavakit import __version__

    version = llavakit("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"llavakit {__version__}"
    for command in ["generate", "chat", "serve", "batch", "eval-mc", "train", "merge", "convert"]:
        text = llavakit(command, "--help").stdout
        assert "--model" in text or command in ("merge", "convert"), command
        options = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
        bare = [o for o in options if o != "--help" and _help_of(text, o) == ""]
        assert not bare, f"{command}: options without help text: {bare}"
    assert "(default: 64)" in llavakit("generate", "--help").stdout


def _help_of(text: str, option: str) -> str:
    """The help text after `option` in --help output (same line or the indented lines below it)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"  {option}"):
            rest = line.strip().split("  ", 1)[1:]  # text on the same line after two spaces
            following = [ln.strip() for ln in lines[i + 1:i + 2] if ln.startswith(" " * 10)]
            return " ".join(rest + following).strip()
    return ""


def test_loading_skips_the_random_init_that_loading_overwrites():
    """Random init on the meta device imported torch._dynamo (seconds of every start-up); loading skips it."""
    code = ("import sys, llavakit\n"
            "from llavakit import demo\n"
            "llavakit.AutoModelForImageTextToText.from_pretrained(demo.demo_checkpoint())\n"
            "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_chat_on_a_terminal_has_readline_history():
    """On a pty, Up recalls the previous line (readline), and Ctrl-D leaves."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llavakit", "chat", "--image", demo.EXAMPLE_IMAGE],
                            stdin=follower, stdout=follower, stderr=subprocess.PIPE, close_fds=True)
    os.close(follower)
    screen = b""

    def read_until(text: bytes, count: int = 1) -> None:
        nonlocal screen
        deadline = time.time() + 120
        while screen.count(text) < count and time.time() < deadline:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    screen += os.read(leader, 65536)
                except OSError:
                    break

    try:
        read_until(b"you> ")
        os.write(leader, b"What shape is inside the red box?\r")
        read_until(b"you> ", 2)
        os.write(leader, b"\x1b[A\r")  # Up, Enter: the same question again, from the history
        read_until(b"you> ", 3)
        os.write(leader, b"\x04")  # Ctrl-D
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        os.close(leader)
    assert proc.returncode == 0 and b"Traceback" not in err, err
    assert screen.count(b"assistant> square") == 2, screen.decode(errors="replace")
