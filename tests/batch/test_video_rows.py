"""`llavakit batch` with a video column: video rows are answered by a video model (the frames really reach it),
a bad video or a video for an image-only model is that row's error, and the CLI's --num-frames is used."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llavakit.batch.inputs import read_rows
from llavakit.batch.runner import BatchEngine
from llavakit.cli.main import main
from llavakit.processing.video import load_video
from tests import assets


@pytest.fixture(scope="module")
def onevision_folder(tmp_path_factory, tiny_llava_onevision_dir, video_tokenizer_dir):
    """The tiny OneVision weights and its processor (with the checkpoint's anyres_max_4) in one folder, as a
    llava-hf repo has them."""
    folder = tmp_path_factory.mktemp("onevision-full")
    for path in tiny_llava_onevision_dir.iterdir():
        shutil.copy(path, folder / path.name)
    assets.onevision_processor(video_tokenizer_dir, vision_aspect_ratio=assets.ONEVISION_ASPECT).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(onevision_folder):
    return BatchEngine(str(onevision_folder), max_new_tokens=4, num_frames=4)


def test_video_rows_answered_and_bad_videos_are_row_errors(engine, h264_clip, photos, tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    rows = [{"id": "clip", "images": [], "videos": [str(h264_clip)], "prompt": "What happens?"},
            {"id": "junk", "images": [], "videos": [str(tmp_path / "junk.mp4")], "prompt": "x"},
            {"id": "photo", "images": [str(photos["chelsea"])], "prompt": "What animal?"},
            {"id": "gone", "images": [], "videos": [str(tmp_path / "gone.mp4")], "prompt": "x"}]
    results = engine.run(rows)
    assert [r["id"] for r in results] == ["clip", "junk", "photo", "gone"]
    clip, junk, photo, gone = results
    assert clip["error"] is None and clip["answer"] and clip["completion_tokens"] == 4
    assert clip["videos"] == [str(h264_clip)] and "videos" not in photo
    assert "as a video" in junk["error"] and junk["answer"] is None
    assert "not an existing file" in gone["error"]
    assert photo["error"] is None
    assert [clip, photo] == engine.run([rows[0], rows[2]]) == [engine.run([rows[0]])[0], engine.run([rows[2]])[0]]


def test_video_row_equals_direct_generate(engine, h264_clip):
    """The batch answer is the model's greedy answer to the clip's 4 sampled frames (so the video was used)."""
    [result] = engine.run([{"id": "c", "images": [], "videos": [str(h264_clip)], "prompt": "What happens?"}])
    frames, _ = load_video(h264_clip, num_frames=4)  # (4, H, W, 3)
    text = engine.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
        add_generation_prompt=True)
    inputs = engine.processor(videos=[frames], text=text, return_tensors="pt")
    assert inputs["pixel_values_videos"].shape[1] == 4
    with torch.no_grad():
        out = engine.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert result["prompt_tokens"] == inputs["input_ids"].shape[1]
    assert result["answer"] == engine.processor.decode(out[0, inputs["input_ids"].shape[1]:],
                                                       skip_special_tokens=True).strip()
    without = engine.run([{"id": "t", "images": [], "prompt": "What happens?"}])[0]
    assert result["prompt_tokens"] > without["prompt_tokens"] + 4  # the video's tokens are in the prompt


def test_video_row_for_image_only_model_is_a_row_error(tiny_llava_dir, h264_clip, photos):
    engine = BatchEngine(str(tiny_llava_dir), max_new_tokens=2)
    results = engine.run([{"id": "v", "images": [], "videos": [str(h264_clip)], "prompt": "x"},
                          {"id": "p", "images": [str(photos["chelsea"])], "prompt": "x"}])
    assert "does not take videos" in results[0]["error"] and "llava" in results[0]["error"]
    assert "OneVision" in results[0]["error"] and results[0]["answer"] is None
    assert results[1]["error"] is None and results[1]["answer"]


def test_bad_num_frames_is_value_error(onevision_folder):
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        BatchEngine(str(onevision_folder), num_frames=0)


def test_read_rows_video_columns(tmp_path):
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "video": "clips/a.mp4", "prompt": "What happens?"},
        {"id": "b", "image": "cat.png"},
        {"id": "c", "videos": ["https://example.com/v.mp4"], "image": "cat.png"}]))
    rows = read_rows(tmp_path / "rows.jsonl")
    assert rows == [{"id": "a", "images": [], "videos": [str(tmp_path / "clips" / "a.mp4")], "prompt": "What happens?"},
                    {"id": "b", "images": [str(tmp_path / "cat.png")], "prompt": None},
                    {"id": "c", "images": [str(tmp_path / "cat.png")], "videos": ["https://example.com/v.mp4"],
                     "prompt": None}]
    (tmp_path / "llava.json").write_text(json.dumps([{"id": "v1", "video": "clip.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It pans."}]}]))
    assert read_rows(tmp_path / "llava.json") == [
        {"id": "v1", "images": [], "videos": [str(tmp_path / "clip.mp4")], "prompt": "What happens?"}]
    with pytest.raises(ValueError, match="'video' column must be"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"video": 3}))
        read_rows(tmp_path / "bad.jsonl")


def test_cli_video_column_and_num_frames(onevision_folder, h264_clip, tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"id": "v", "video": str(h264_clip), "prompt": "What happens?"}) + "\n")
    outs = []
    for frames in (2, 4):
        out = tmp_path / f"out{frames}.jsonl"
        assert main(["batch", str(onevision_folder), "--input", str(source), "--output", str(out),
                     "--num-frames", str(frames), "--max-new-tokens", "2", "--no-progress"]) == 0
        outs.append(json.loads(out.read_text()))
    assert all(r["error"] is None and r["videos"] == [str(h264_clip)] for r in outs)
    assert outs[0]["prompt_tokens"] < outs[1]["prompt_tokens"]  # more frames, more video tokens
