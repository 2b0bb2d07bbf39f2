"""`llavakit generate --video`: run as a user would (a subprocess) on tiny OneVision and NeXT-Video checkpoints,
answers equal to transformers' greedy answer on the same frames, and bad videos as one-line errors."""

import os
import subprocess
import sys

import pytest
import torch
import transformers
from PIL import Image

from llavakit.processing.video import load_video


def llavakit(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-m", "llavakit", "generate", "--device", "cpu", "--no-stream", *args],
                            capture_output=True, env=env, timeout=300)
    # decoded by hand: text=True would turn a generated "\r" into "\n"
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                       result.stderr.decode())


def transformers_answer(folder, prompt: str, videos: list, images: list | None = None, max_new_tokens: int = 6) -> str:
    """transformers' greedy answer for the same conversation and frames (the CLI's reference)."""
    processor = transformers.AutoProcessor.from_pretrained(folder)
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
    content = ([{"type": "image"} for _ in images or []] + [{"type": "video"} for _ in videos]
               + [{"type": "text", "text": prompt}])
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=text, images=images or None, videos=videos, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", ["onevision", "next_video"])
def test_video_answer_matches_transformers(family, request, h264_clip):
    folder = request.getfixturevalue(f"{family}_checkpoint_dir")
    result = llavakit("--model", str(folder), "--video", str(h264_clip), "--num-frames", "4",
                      "--prompt", "What happens?", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    frames, _ = load_video(h264_clip, num_frames=4)
    expected = transformers_answer(folder, "What happens?", [frames])
    assert expected and result.stdout.strip() == expected


def test_default_frames_and_fps(onevision_checkpoint_dir, h264_clip):
    """Without --num-frames 8 frames are sampled; --fps 2 on the 2.5 s clip at 10 fps samples 5."""
    default = llavakit("--model", str(onevision_checkpoint_dir), "--video", str(h264_clip), "--max-new-tokens", "6")
    assert default.returncode == 0, default.stderr
    eight, _ = load_video(h264_clip, num_frames=8)
    assert default.stdout.strip() == transformers_answer(onevision_checkpoint_dir, "What is in the video?", [eight])
    by_fps = llavakit("--model", str(onevision_checkpoint_dir), "--video", str(h264_clip), "--fps", "2",
                      "--prompt", "Describe.", "--max-new-tokens", "6")
    assert by_fps.returncode == 0, by_fps.stderr
    five, meta = load_video(h264_clip, fps=2)
    assert len(meta.frames_indices) == 5
    assert by_fps.stdout.strip() == transformers_answer(onevision_checkpoint_dir, "Describe.", [five])


def test_image_and_video_together_on_onevision(onevision_checkpoint_dir, h264_clip, photos):
    photo = next(iter(photos.values()))
    result = llavakit("--model", str(onevision_checkpoint_dir), "--image", str(photo), "--video", str(h264_clip),
                      "--num-frames", "3", "--prompt", "Compare them.", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    frames, _ = load_video(h264_clip, num_frames=3)
    image = Image.open(photo).convert("RGB")
    assert result.stdout.strip() == transformers_answer(onevision_checkpoint_dir, "Compare them.", [frames], [image])


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("name, message", [
    ("truncated.mp4", "cannot open .*truncated.mp4 as a video"),
    ("cut.mp4", "cut.mp4 is truncated or corrupt"),
    ("garbage.mp4", "cannot open .*garbage.mp4 as a video"),
    ("audio.m4a", "audio.m4a has no video stream"),
    ("no-frames.avi", "no-frames.avi has a video stream with zero frames"),
    ("missing.mp4", "missing.mp4 is not an existing file"),
])
def test_bad_video_is_a_one_line_error(name, message, bad_videos, onevision_checkpoint_dir):
    import re

    line = one_line_error(llavakit("--model", str(onevision_checkpoint_dir), "--video", str(bad_videos / name)))
    assert re.search(message, line), line


def test_bad_frame_options(onevision_checkpoint_dir, h264_clip):
    folder = str(onevision_checkpoint_dir)
    assert "ask for fewer frames" in one_line_error(
        llavakit("--model", folder, "--video", str(h264_clip), "--num-frames", "26"))
    assert "--num-frames must be at least 1" in one_line_error(
        llavakit("--model", folder, "--video", str(h264_clip), "--num-frames", "0"))
    assert "--fps must be positive" in one_line_error(llavakit("--model", folder, "--video", str(h264_clip),
                                                               "--fps", "-1"))
    assert "give a --video" in one_line_error(llavakit("--model", folder, "--image", "x.png", "--num-frames", "4"))
    both = llavakit("--model", folder, "--video", str(h264_clip), "--num-frames", "4", "--fps", "2")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr  # argparse's exclusive group


def test_video_for_an_image_only_model(tiny_llava_dir, h264_clip):
    line = one_line_error(llavakit("--model", str(tiny_llava_dir), "--video", str(h264_clip)))
    assert "does not take videos" in line and "OneVision" in line


def test_more_video_placeholders_than_videos(onevision_checkpoint_dir, h264_clip):
    line = one_line_error(llavakit("--model", str(onevision_checkpoint_dir), "--video", str(h264_clip),
                                   "--prompt", "Compare with <video>"))
    assert "2 <video> tokens and 1 videos" in line, line
