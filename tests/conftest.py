"""Shared fixtures: built once per test session from real assets (see tests/assets.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import assets


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The real Mistral-7B v0.1 tokenizer (32000 tokens) plus <image>=32000 and <pad>=32001."""
    return assets.build_mistral_tokenizer(tmp_path_factory.mktemp("mistral-tokenizer"))


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Real photos shipped in scikit-image: astronaut, chelsea (cat), coffee, rocket, camera (grey), horse (RGBA)."""
    root = assets.photos_dir()
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "horse.png"]
    return {name.split(".")[0]: root / name for name in names}


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Tiny random LLaVA-1.5 (CLIP + Llama) as transformers 5 saves it: vision keys without `vision_model.`."""
    return assets.build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llava_hub_dir(tmp_path_factory, tiny_llava_dir) -> Path:
    """The same weights in the published llava-hf layout: sharded, sparse config, older processor files."""
    return assets.to_hub_layout(tiny_llava_dir, tmp_path_factory.mktemp("tiny-llava-hub"))


@pytest.fixture(scope="session")
def tiny_mistral_llava_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Tiny random bakLlava-style checkpoint: Mistral decoder with a short sliding window (8 tokens)."""
    return assets.build_tiny_llava(tmp_path_factory.mktemp("tiny-mistral-llava"), tokenizer_dir,
                                   text_model_type="mistral", sliding_window=8, seed=1)


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """Tiny random LLaVA-NeXT (anyres: crop 28, patch 7, 1.6-style pinpoints scaled down) + its processor."""
    return assets.build_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"), tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_vipllava_dir(tmp_path_factory, tiny_llava_dir) -> Path:
    """Tiny random ViP-LLaVA (10-layer CLIP for the default layer list) with the tiny LLaVA's processor files."""
    return assets.build_tiny_vipllava(tmp_path_factory.mktemp("tiny-vipllava"), tiny_llava_dir)


@pytest.fixture(scope="session")
def tiny_llava_onevision_dir(tmp_path_factory) -> Path:
    """Tiny random LLaVA-OneVision (SigLIP + Qwen2, 28 px crops up to 3x3, anyres_max_4), model files only."""
    return assets.build_tiny_llava_onevision(tmp_path_factory.mktemp("tiny-llava-onevision"))


@pytest.fixture(scope="session")
def tiny_llava_next_video_dir(tmp_path_factory) -> Path:
    """Tiny random LLaVA-NeXT-Video (CLIP + Llama, average pooling stride 2), model files only."""
    return assets.build_tiny_llava_next_video(tmp_path_factory.mktemp("tiny-llava-next-video"))


@pytest.fixture(scope="session")
def video_tokenizer_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """The test tokenizer plus <video> = 32002."""
    return assets.build_video_tokenizer(tmp_path_factory.mktemp("video-tokenizer"), tokenizer_dir)


@pytest.fixture(scope="session")
def h264_clip(tmp_path_factory) -> Path:
    """A 25-frame 96x64 H.264 mp4 at 10 fps of a photo panning (encoded with PyAV)."""
    return assets.write_h264_clip(tmp_path_factory.mktemp("clips") / "pan.mp4")


@pytest.fixture(scope="session")
def onevision_processor_dir(tmp_path_factory, video_tokenizer_dir) -> Path:
    """transformers' tiny LlavaOnevisionProcessor as transformers 5 saves it (all in processor_config.json)."""
    folder = tmp_path_factory.mktemp("onevision-processor")
    assets.onevision_processor(video_tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def next_video_processor_dir(tmp_path_factory, video_tokenizer_dir) -> Path:
    """transformers' tiny LlavaNextVideoProcessor as transformers 5 saves it."""
    folder = tmp_path_factory.mktemp("next-video-processor")
    assets.next_video_processor(video_tokenizer_dir).save_pretrained(folder)
    return folder


def _model_with_processor(out_dir: Path, model_dir: Path, processor_dir: Path) -> Path:
    """A checkpoint folder as the Hub has it: the model's files and the processor's in one place."""
    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    shutil.copytree(processor_dir, out_dir, dirs_exist_ok=True)
    return out_dir


@pytest.fixture(scope="session")
def onevision_checkpoint_dir(tmp_path_factory, tiny_llava_onevision_dir, video_tokenizer_dir) -> Path:
    """The tiny LLaVA-OneVision model and its processor (set to the model's anyres_max_4) in one folder."""
    processor_dir = tmp_path_factory.mktemp("onevision-processor-max4")
    assets.onevision_processor(video_tokenizer_dir, vision_aspect_ratio=assets.ONEVISION_ASPECT).save_pretrained(
        processor_dir)
    return _model_with_processor(tmp_path_factory.mktemp("onevision-full"), tiny_llava_onevision_dir, processor_dir)


@pytest.fixture(scope="session")
def next_video_checkpoint_dir(tmp_path_factory, tiny_llava_next_video_dir, next_video_processor_dir) -> Path:
    """The tiny LLaVA-NeXT-Video model and its processor in one folder."""
    return _model_with_processor(tmp_path_factory.mktemp("next-video-full"), tiny_llava_next_video_dir,
                                 next_video_processor_dir)


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory, h264_clip) -> Path:
    """Broken video files beside the clip: truncated, cut, garbage, empty, audio only, zero frames, faststart."""
    import av
    import numpy as np

    folder = tmp_path_factory.mktemp("bad-videos")
    data = h264_clip.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[:len(data) // 2])  # the index (moov) is at the end: cut off
    faststart = assets.write_h264_clip(folder / "faststart.mp4", faststart=True)  # the index first, then the frames
    (folder / "cut.mp4").write_bytes(faststart.read_bytes()[:int(faststart.stat().st_size * 0.6)])
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (folder / "empty.mp4").write_bytes(b"")
    with av.open(str(folder / "audio.m4a"), "w") as container:  # an audio track only
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    container = av.open(str(folder / "no-frames.avi"), "w")  # a video stream that never got a frame
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
    container.close()
    return folder
