"""LLaVA-Video records ({"video": ..., "conversations": [...]}, `<video>` in the human turn): encoded with a fixed
number of frames and the video tokens masked out of the labels, collated, and trained on the tiny OneVision."""

from __future__ import annotations

import shutil

import pytest
import torch

from llavakit import AutoProcessor, LlavaOnevisionForConditionalGeneration
from llavakit.training import freeze
from llavakit.training.data import IGNORE_INDEX, Collator, SupervisedDataset, llava_to_messages
from llavakit.training.loop import TrainingArguments, train


def video_record(i: int, clip: str = "pan.mp4", placeholder: bool = True) -> dict:
    question = f"{'<video>' + chr(10) if placeholder else ''}What happens in clip {i}?"
    return {"id": f"v{i}", "video": clip, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": f"The camera pans, take {i}."}]}


@pytest.fixture(scope="module")
def clip_folder(h264_clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips-train")
    shutil.copy(h264_clip, folder / "pan.mp4")
    return folder


@pytest.fixture(scope="module")
def processor(onevision_processor_dir):
    return AutoProcessor.from_pretrained(onevision_processor_dir)


def test_video_record_to_messages():
    messages, images = llava_to_messages(video_record(0))
    assert images == [] and messages[0]["content"][0] == {"type": "video"}
    assert messages[0]["content"][1]["text"] == "What happens in clip 0?"
    messages, _ = llava_to_messages(video_record(0, placeholder=False))  # no <video>: it goes in the first turn
    assert messages[0]["content"][0] == {"type": "video"}
    with pytest.raises(ValueError, match="2 <video> placeholder"):
        record = video_record(0)
        record["conversations"][0]["value"] = "<video><video> Two?"
        llava_to_messages(record)


def test_encoded_video_sample_masks_video_tokens(processor, clip_folder):
    dataset = SupervisedDataset([video_record(0)], processor, image_folder=str(clip_folder), num_frames=4)
    sample = dataset[0]
    videos = sample["pixel_values_videos"]
    assert videos.shape[:3] == (1, 4, 3)  # (n_videos, num_frames, 3, S, S)
    ids, labels = sample["input_ids"], sample["labels"]
    video = ids == processor.video_token_id
    assert int(video.sum()) == processor.num_video_tokens(4)
    assert bool((labels[video] == IGNORE_INDEX).all())
    learned = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert "The camera pans, take 0." in learned and "What happens" not in learned
    batch = Collator(processor.tokenizer.pad_token_id)([sample, dataset[0]])
    assert batch["pixel_values_videos"].shape[:2] == (2, 4) and batch["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        SupervisedDataset([video_record(0)], processor, num_frames=0)


def test_video_for_image_only_processor_is_value_error(tiny_llava_dir, clip_folder):
    dataset = SupervisedDataset([video_record(0)], AutoProcessor.from_pretrained(tiny_llava_dir),
                                image_folder=str(clip_folder))
    with pytest.raises(ValueError, match="takes none; train a video model"):
        dataset[0]


def test_training_on_videos_lowers_loss_and_saves(tiny_llava_onevision_dir, processor, clip_folder, tmp_path):
    torch.manual_seed(0)
    dataset = SupervisedDataset([video_record(i) for i in range(4)], processor, image_folder=str(clip_folder),
                                num_frames=4)
    collate = Collator(processor.tokenizer.pad_token_id)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_onevision_dir)
    freeze.apply_stage(model, "stage2")
    batch = collate([dataset[i] for i in range(4)])
    with torch.no_grad():
        before = float(model(**batch).loss)
    train(model, TrainingArguments(str(tmp_path), max_steps=6, per_device_train_batch_size=2, learning_rate=5e-3,
                                   warmup_ratio=0.0, disable_progress=True, logging_steps=1), dataset, collate)
    with torch.no_grad():
        after_out = model(**batch)
    after = float(after_out.loss)
    assert torch.isfinite(torch.tensor([before, after])).all() and after < before
    model.save_pretrained(tmp_path / "saved")
    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, after_out.logits)


def test_cli_train_on_video_records(tiny_llava_onevision_dir, onevision_processor_dir, clip_folder, tmp_path):
    import json

    from llavakit.cli.main import main

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for source in (tiny_llava_onevision_dir, onevision_processor_dir):
        for path in source.iterdir():
            shutil.copy(path, model_dir / path.name)
    (tmp_path / "data.json").write_text(json.dumps([video_record(i) for i in range(3)]))
    out = tmp_path / "out"
    assert main(["train", "--model", str(model_dir), "--data", str(tmp_path / "data.json"), "--image-folder",
                 str(clip_folder), "--output-dir", str(out), "--stage", "stage2", "--num-frames", "2",
                 "--max-steps", "2", "--batch-size", "2", "--logging-steps", "1", "--quiet"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    assert any("loss" in r for r in log)
    trained = LlavaOnevisionForConditionalGeneration.from_pretrained(out)
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_onevision_dir)
    assert not torch.equal(trained.multi_modal_projector.linear_1.weight, base.multi_modal_projector.linear_1.weight)
