"""Shared fixtures: built once per test session from real assets (see tests/assets.py)."""

from __future__ import annotations

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
