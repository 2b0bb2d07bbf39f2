"""Hub repo ids go through huggingface_hub's real cache code, tested offline with a hand-made HF cache.

huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported, so each case runs in a fresh
Python process with those variables set.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "llava-hf/tiny-llava-test"


def make_hf_cache(hf_home, checkpoint, branch="main"):
    """Lay files out as huggingface_hub's cache does: refs/<branch> -> snapshots/<commit>/<files>."""
    repo = hf_home / "hub" / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / branch).write_text(COMMIT)
    return snapshot


def run_python(code, hf_home, offline=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)


LOAD = f"""
    from llavakit import AutoConfig, LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained({REPO!r}, {{kwargs}})
    print("loaded", type(model).__name__, model.config.text_config.hidden_size)
"""


def test_repo_id_loads_from_the_hf_home_cache_offline(tmp_path, tiny_llava_hub_dir):
    make_hf_cache(tmp_path / "hf", tiny_llava_hub_dir)
    result = run_python(LOAD.format(kwargs=""), tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert "loaded LlavaForConditionalGeneration 64" in result.stdout


def test_revision_and_local_files_only(tmp_path, tiny_llava_hub_dir):
    make_hf_cache(tmp_path / "hf", tiny_llava_hub_dir, branch="v1")
    ok = run_python(LOAD.format(kwargs="revision='v1', local_files_only=True"), tmp_path / "hf", offline=False)
    assert ok.returncode == 0, ok.stderr
    missing = run_python(LOAD.format(kwargs="revision='v2', local_files_only=True"), tmp_path / "hf",
                         offline=False)
    assert missing.returncode != 0
    assert "CheckpointNotFoundError" in missing.stderr and "offline mode is on" in missing.stderr


def test_offline_mode_without_a_cached_copy_says_so(tmp_path):
    result = run_python(LOAD.format(kwargs=""), tmp_path / "empty-hf")
    assert result.returncode != 0
    assert "cannot get config.json of llava-hf/tiny-llava-test: offline mode is on" in result.stderr


@pytest.mark.parametrize("name", ["./not-here", "/abs/not/here", "a/b/c"])
def test_paths_that_are_not_repo_ids(name):
    from llavakit.loading.hub import CheckpointNotFoundError, resolve_file

    with pytest.raises(CheckpointNotFoundError, match="neither an existing folder nor a Hub repo id"):
        resolve_file(name, "config.json")


def test_processor_and_model_from_a_repo_id_offline(tmp_path, tiny_llava_hub_dir):
    make_hf_cache(tmp_path / "hf", tiny_llava_hub_dir)
    code = f"""
        from llavakit import AutoModelForImageTextToText, AutoProcessor
        processor = AutoProcessor.from_pretrained({REPO!r})
        model = AutoModelForImageTextToText.from_pretrained({REPO!r})
        inputs = processor(text="USER: hello ASSISTANT:", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        print(type(processor).__name__, out.shape[0], out.shape[1] - inputs["input_ids"].shape[1])
    """
    result = run_python(code, tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["LlavaProcessor", "1", "3"]
