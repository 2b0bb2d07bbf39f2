"""Video processors against transformers': identical pixel_values_videos for every input form, configs, errors."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
import transformers

from llavakit import AutoVideoProcessor, LlavaNextVideoVideoProcessor, LlavaOnevisionVideoProcessor
from llavakit.processing.video_processor import center_crop_frames, resize_frames
from tests import assets

needs_torchcodec = pytest.mark.skipif(not assets.transformers_decodes_video(),
                                      reason="transformers decodes video files with torchcodec")

SMALL = {"LlavaOnevisionVideoProcessor": dict(size={"height": 28, "width": 28}),
         "LlavaNextVideoVideoProcessor": dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})}
PAIRS = [(LlavaOnevisionVideoProcessor, transformers.LlavaOnevisionVideoProcessor),
         (LlavaNextVideoVideoProcessor, transformers.LlavaNextVideoVideoProcessor)]


def assert_same_videos(got, expected):
    assert list(got) == list(expected)
    ours, theirs = got["pixel_values_videos"], expected["pixel_values_videos"]
    if isinstance(theirs, torch.Tensor):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    else:
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    landscape = rng.integers(0, 256, (5, 60, 90, 3), dtype=np.uint8)
    portrait = rng.integers(0, 256, (3, 100, 50, 3), dtype=np.uint8)
    return {"landscape": landscape, "portrait": portrait, "tiny": rng.integers(0, 256, (2, 9, 13, 3), dtype=np.uint8),
            "grey": rng.integers(0, 256, (2, 40, 40, 1), dtype=np.uint8)}


@pytest.mark.parametrize("ours_cls, ref_cls", PAIRS)
@pytest.mark.parametrize("small", [True, False])
def test_input_forms_match_transformers(ours_cls, ref_cls, small, clips):
    kwargs = SMALL[ours_cls.__name__] if small else {}
    ours, ref = ours_cls(**kwargs), ref_cls(**kwargs)
    land, portrait = clips["landscape"], clips["portrait"]
    inputs = [land, torch.from_numpy(land), land.transpose(0, 3, 1, 2), [PIL.Image.fromarray(f) for f in portrait],
              [land, portrait], [[land], [portrait, clips["tiny"]]], clips["grey"], land[None]]
    for videos in inputs:
        assert_same_videos(ours(videos), ref(videos))
    assert_same_videos(ours(land, return_tensors="pt"), ref(land, return_tensors="pt"))
    out = ours([land, land], return_tensors="pt")["pixel_values_videos"]
    side = 28 if small else (384 if ours_cls is LlavaOnevisionVideoProcessor else 224)
    assert out.shape == (2, 5, 3, side, side) and out.dtype == torch.float32


@pytest.mark.parametrize("ours_cls, ref_cls", PAIRS)
def test_call_kwargs_match_transformers(ours_cls, ref_cls, clips):
    ours, ref = ours_cls(), ref_cls()
    land = clips["landscape"]
    for kwargs in [dict(do_sample_frames=True, num_frames=2), dict(size={"height": 20, "width": 30}),
                   dict(do_normalize=False), dict(do_rescale=False), dict(do_rescale=False, do_normalize=False),
                   dict(resample=2), dict(resample=0), dict(image_mean=0.5, image_std=0.25),
                   dict(do_resize=False, do_center_crop=True, crop_size={"height": 80, "width": 40})]:
        assert_same_videos(ours(land, **kwargs), ref(land, **kwargs))
    assert_same_videos(ours(land.astype(np.float32) / 255, size={"height": 20, "width": 20}),
                       ref(land.astype(np.float32) / 255, size={"height": 20, "width": 20}))


def test_sampling_from_arrays(clips):
    ours, ref = LlavaOnevisionVideoProcessor(**SMALL["LlavaOnevisionVideoProcessor"]), \
        transformers.LlavaOnevisionVideoProcessor(**SMALL["LlavaOnevisionVideoProcessor"])
    land = clips["landscape"]
    got = ours(land, do_sample_frames=True, num_frames=3, return_metadata=True)
    assert_same_videos({"pixel_values_videos": got["pixel_values_videos"]},
                       {"pixel_values_videos": ref(land, do_sample_frames=True, num_frames=3)["pixel_values_videos"]})
    assert got["video_metadata"][0].frames_indices == [0, 1, 3]
    metadata = {"total_num_frames": 5, "fps": 2.0}
    assert_same_videos(ours(land, do_sample_frames=True, fps=1, video_metadata=metadata),
                       ref(land, do_sample_frames=True, fps=1, video_metadata=metadata))


@needs_torchcodec
def test_decodes_files_like_transformers(h264_clip):
    ours = LlavaNextVideoVideoProcessor(**SMALL["LlavaNextVideoVideoProcessor"])
    ref = transformers.LlavaNextVideoVideoProcessor(**SMALL["LlavaNextVideoVideoProcessor"])
    for kwargs in [dict(do_sample_frames=True, num_frames=6), dict(do_sample_frames=True, fps=1), {}]:
        assert_same_videos(ours(str(h264_clip), **kwargs), ref(str(h264_clip), **kwargs))


def test_tensor_ops():
    frames = torch.arange(2 * 3 * 5 * 4, dtype=torch.uint8).reshape(2, 3, 5, 4)
    assert resize_frames(frames, 5, 4, 3) is frames  # same size: untouched
    assert resize_frames(frames, 10, 8, 3).dtype == torch.uint8
    padded = center_crop_frames(frames, 7, 4)
    assert padded.shape == (2, 3, 7, 4) and torch.equal(padded[..., 1:6, :], frames)
    assert (padded[..., 0, :] == 0).all() and (padded[..., 6, :] == 0).all()


# ---- configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ours_cls, ref_cls", PAIRS)
def test_config_round_trip(ours_cls, ref_cls, tmp_path, clips):
    ref = ref_cls(**SMALL[ours_cls.__name__])
    ref.save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ours_cls
    assert_same_videos(loaded(clips["portrait"]), ref(clips["portrait"]))
    assert loaded.to_dict() == {k: list(v) if isinstance(v, tuple) else v for k, v in ref.to_dict().items()}
    again = tmp_path / "again"
    loaded.save_pretrained(again)
    theirs = transformers.AutoVideoProcessor.from_pretrained(again)
    assert type(theirs) is ref_cls
    assert_same_videos(loaded(clips["landscape"]), theirs(clips["landscape"]))
    assert json.loads((again / "video_preprocessor_config.json").read_text())["video_processor_type"] == \
        ours_cls.__name__


def test_defaults_match_transformers():
    for ours_cls, ref_cls in PAIRS:
        ours, ref = ours_cls(), ref_cls()
        assert ours.to_dict() == {k: list(v) if isinstance(v, tuple) else v for k, v in ref.to_dict().items()}


# ---- errors -------------------------------------------------------------------------------------
def test_errors(clips):
    processor = LlavaOnevisionVideoProcessor()
    land, portrait = clips["landscape"], clips["portrait"]
    with pytest.raises(ValueError, match="cannot stack videos of different processed shapes"):
        processor([land, portrait], return_tensors="pt")
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        processor(np.zeros((2, 3, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no channel axis of size 1 or 3"):
        processor(np.zeros((2, 8, 8, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="a video has zero frames"):
        processor(np.zeros((0, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no videos were given"):
        processor([])
    with pytest.raises(ValueError, match="num_frames / fps are only used with do_sample_frames=True"):
        processor(land, num_frames=2)
    with pytest.raises(ValueError, match="cannot sample num_frames=9 from a video of 5 frames"):
        processor(land, do_sample_frames=True, num_frames=9)
    with pytest.raises(ValueError, match="frame rate is unknown"):
        processor(land, do_sample_frames=True, fps=1)
    with pytest.raises(ValueError, match="sampling frames from a list of frames is not supported"):
        processor([PIL.Image.fromarray(f) for f in land], do_sample_frames=True, num_frames=2)
    with pytest.raises(ValueError, match="video resample must be one of"):
        processor(land, resample=4)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        processor(land, nonsense=1)
    with pytest.raises(ValueError, match="got 1 videos but 2 video_metadata entries"):
        processor(land, video_metadata=[{"total_num_frames": 5}] * 2)
