"""Video decoding and sampling against transformers' loader (torchcodec on FFmpeg), and bad video files."""

import sys

import av
import numpy as np
import PIL.Image
import pytest
import torch
from transformers.video_utils import VideoMetadata as HFMetadata
from transformers.video_utils import default_sample_indices_fn
from transformers.video_utils import load_video as hf_load_video

from llavakit.processing import video
from tests import assets
from llavakit.processing.video import flatten_videos, load_video, sample_indices

TORCHCODEC = assets.transformers_decodes_video()
BACKENDS = ["pyav", "torchcodec"] if TORCHCODEC else ["pyav"]
needs_torchcodec = pytest.mark.skipif(not TORCHCODEC, reason="transformers decodes video files with torchcodec")


# ---- sampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [1, 7, 25, 300])
def test_sample_indices_match_transformers(total):
    for num_frames in range(1, min(total, 40) + 1):
        expected = default_sample_indices_fn(HFMetadata(total_num_frames=total, fps=24.0), num_frames=num_frames)
        assert sample_indices(total, num_frames=num_frames).tolist() == expected.tolist()
    for fps in (0.1, 0.5, 1, 2.5, 24):
        if int(total / 24.0 * fps) <= total:
            expected = default_sample_indices_fn(HFMetadata(total_num_frames=total, fps=24.0), fps=fps)
            assert sample_indices(total, fps=fps, video_fps=24.0).tolist() == expected.tolist()
    assert sample_indices(total).tolist() == list(range(total))
    assert sample_indices(25, num_frames=4).tolist() == [0, 6, 12, 18]


def test_sampling_errors():
    with pytest.raises(ValueError, match="mutually exclusive"):
        sample_indices(10, num_frames=2, fps=1, video_fps=10)
    with pytest.raises(ValueError, match="cannot sample num_frames=11 from a video of 10 frames"):
        sample_indices(10, num_frames=11)
    with pytest.raises(ValueError, match="frame rate is unknown"):
        sample_indices(10, fps=1)
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        sample_indices(10, num_frames=0)


# ---- decoding -----------------------------------------------------------------------------------
@needs_torchcodec
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", [{}, {"num_frames": 4}, {"num_frames": 25}, {"fps": 2}, {"fps": 0.1}])
def test_decoded_frames_match_transformers(h264_clip, backend, kwargs):
    ours, meta = load_video(h264_clip, backend=backend, **kwargs)
    expected, hf_meta = hf_load_video(str(h264_clip), backend="torchcodec", **kwargs)  # (T, 3, H, W) tensor
    expected = expected.permute(0, 2, 3, 1).numpy()
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert np.array_equal(ours, expected)
    assert meta.frames_indices == list(hf_meta.frames_indices)
    assert (meta.total_num_frames, meta.fps, meta.height, meta.width) == (25, 10.0, 64, 96)
    assert meta.duration == pytest.approx(2.5)


def test_frames_are_the_photo(h264_clip):
    """The decoded frames really are the encoded crops (lossy, so close, not equal)."""
    import skimage.data

    frames, _ = load_video(h264_clip, num_frames=5)
    photo = skimage.data.astronaut().astype(int)
    for frame, index in zip(frames, [0, 5, 10, 15, 20]):
        crop = photo[index * 4:index * 4 + 64, index * 6:index * 6 + 96]
        assert np.abs(frame.astype(int) - crop).mean() < 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_decode_like_the_file(h264_clip, backend):
    from_file, _ = load_video(h264_clip, backend=backend, num_frames=5)
    from_bytes, meta = load_video(h264_clip.read_bytes(), backend=backend, num_frames=5)
    assert np.array_equal(from_bytes, from_file) and meta.frames_indices == [0, 5, 10, 15, 20]
    with pytest.raises(ValueError, match="cannot open <5000 bytes of video> as a video"):
        load_video(bytes(5000), backend=backend)


def test_custom_sampling_function(h264_clip):
    frames, meta = load_video(h264_clip, sample_indices_fn=lambda metadata: np.array([3, 24]))
    assert frames.shape == (2, 64, 96, 3) and meta.frames_indices == [3, 24]
    with pytest.raises(ValueError, match=r"outside the video's 25 frames"):
        load_video(h264_clip, sample_indices_fn=lambda metadata: np.array([25]))


# ---- bad files ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, h264_clip):
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_files_give_clear_errors(bad_files, backend):
    with pytest.raises(ValueError, match="cannot open .*truncated.mp4 as a video: .*Invalid data"):
        load_video(bad_files / "truncated.mp4", backend=backend)
    with pytest.raises(ValueError, match="cut.mp4 is truncated or corrupt: (its header promises 25 frames|its frames cannot be decoded)"):
        load_video(bad_files / "cut.mp4", backend=backend)
    assert load_video(bad_files / "faststart.mp4", backend=backend, num_frames=2)[0].shape == (2, 64, 96, 3)
    with pytest.raises(ValueError, match="cannot open .*garbage.mp4 as a video"):
        load_video(bad_files / "garbage.mp4", backend=backend)
    with pytest.raises(ValueError, match="cannot open .*empty.mp4 as a video"):
        load_video(bad_files / "empty.mp4", backend=backend)
    with pytest.raises(ValueError, match="audio.m4a has no video stream"):
        load_video(bad_files / "audio.m4a", backend=backend)
    # PyAV reads the empty stream; torchcodec cannot open it at all
    expected = "no-frames.avi has a video stream with zero frames" if backend == "pyav" else \
        "cannot open .*no-frames.avi as a video"
    with pytest.raises(ValueError, match=expected):
        load_video(bad_files / "no-frames.avi", backend=backend)
    with pytest.raises(ValueError, match="not an existing file"):
        load_video(bad_files / "missing.mp4", backend=backend)


def test_too_many_frames_and_bad_arguments(h264_clip):
    with pytest.raises(ValueError, match="cannot sample num_frames=26 from a video of 25 frames"):
        load_video(h264_clip, num_frames=26)
    with pytest.raises(ValueError, match="unknown video backend 'decord'"):
        load_video(h264_clip, backend="decord")
    with pytest.raises(TypeError, match="takes a path, an http"):
        load_video(np.zeros((2, 4, 4, 3)))


def test_missing_library_names_the_extra(monkeypatch, h264_clip):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(ImportError, match=r'pip install "llavakit\[video\]"'):
        load_video(h264_clip)
    with pytest.raises(ImportError, match=r'pip install "llavakit\[video\]"'):
        load_video(h264_clip, backend="pyav")
    assert video.INSTALL_HINT == 'pip install "llavakit[video]"'


# ---- input shapes ---------------------------------------------------------------------------------
def test_flatten_videos():
    clip = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    frames = [PIL.Image.new("RGB", (8, 8))] * 2
    assert len(flatten_videos(clip)) == 1 and flatten_videos(clip)[0] is clip
    assert len(flatten_videos(np.zeros((2, 3, 8, 8, 3)))) == 2
    assert flatten_videos(frames) == [frames]
    assert len(flatten_videos([clip, torch.zeros(2, 8, 8, 3)])) == 2
    assert len(flatten_videos([[clip], [], [clip, clip]])) == 3
    assert flatten_videos("a.mp4") == ["a.mp4"]
    assert flatten_videos(np.zeros((8, 8, 3)))[0].shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="a video must be a 4-D"):
        flatten_videos(np.zeros((8, 8)))
    with pytest.raises(TypeError, match="videos must be 4-D arrays"):
        flatten_videos(3)
