"""Decoding sampled frames, and every failure kind, with the bad files written here."""

import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypipe.config import SamplingConfig
from raypipe.video.decode import ERROR_KINDS, VideoClip, VideoError, decode_video, probe_video, read_all_frames
from tests.conftest import moving_square_frames

S4 = SamplingConfig(fps=4.0, max_frames=16)


def _kind(result):
    assert isinstance(result, VideoError), f"expected an error, got {result}"
    assert result.kind in ERROR_KINDS and result.message
    return result.kind


def test_decodes_only_sampled_frames_with_right_content(make_mp4):
    path = make_mp4("ok.mp4", t=16, fps=8)
    clip = decode_video(path, S4)
    assert isinstance(clip, VideoClip) and clip.backend == "decord"
    assert clip.info.indices == [0, 2, 4, 6, 9, 11, 13, 15]
    assert clip.frames.shape == (8, 56, 56, 3) and clip.frames.dtype == np.uint8
    truth = moving_square_frames(16, 56, 56)
    err = np.abs(clip.frames.astype(int) - truth[clip.info.indices].astype(int)).mean()
    assert err < 6.0  # lossy H.264 (crf 18) on a noisy background
    for k, i in enumerate(clip.info.indices):  # the square is where it was drawn in source frame i
        x = 2 * i
        assert clip.frames[k, 20:30, x + 2 : x + 10, 0].mean() > 180


def test_resizes_to_the_pixel_budget(make_mp4):
    path = make_mp4("wide.mp4", t=8, h=120, w=200, fps=4)
    clip = decode_video(path, SamplingConfig(fps=4, max_pixels=56 * 84, min_pixels=28 * 28))
    assert clip.frames.shape[1:3] == (clip.info.height, clip.info.width)
    assert clip.frames.shape[1] % 28 == 0 and clip.frames.shape[2] % 28 == 0
    assert clip.frames.shape[1] * clip.frames.shape[2] <= 56 * 84


def test_probe_decodes_nothing_and_matches_decode(make_mp4):
    path = make_mp4("p.mp4", t=24, fps=12)
    info = probe_video(path, S4)
    clip = decode_video(path, S4)
    assert info.indices == clip.info.indices and (info.height, info.width) == clip.frames.shape[1:3]
    assert info.total_frames == 24 and info.fps == pytest.approx(12.0)


def test_missing(tmp_path):
    assert _kind(decode_video(str(tmp_path / "nope.mp4"))) == "missing"
    assert _kind(decode_video("")) == "missing"


def test_empty(tmp_path):
    p = tmp_path / "zero.mp4"
    p.write_bytes(b"")
    assert _kind(decode_video(str(p))) == "empty"


def test_text_file_is_not_a_video(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("these are not the frames you are looking for\n" * 20)
    assert _kind(decode_video(str(p))) == "not_a_video"


def test_still_image_is_not_a_video(tmp_path):
    p = tmp_path / "still.png"
    Image.fromarray(moving_square_frames(1)[0]).save(p)
    assert _kind(decode_video(str(p))) == "not_a_video"


def test_audio_only_is_not_a_video(tmp_path):
    p = tmp_path / "tone.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((np.sin(np.arange(8000) / 5) * 3000).astype(np.int16).tobytes())
    assert _kind(decode_video(str(p))) == "not_a_video"


def test_directory_is_not_a_video(tmp_path):
    assert _kind(decode_video(str(tmp_path))) == "not_a_video"


def test_fifo_socket_and_device_are_refused_without_blocking(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes (a relabel would stall on it); a device never ends."""
    import os
    import socket
    import threading

    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=decode_video(str(fifo))), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the open so the test process can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("decode_video blocked on a FIFO")
    assert _kind(result["r"]) == "not_a_video" and "a FIFO" in result["r"].message
    sock_path = tmp_path / "s.mp4"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert "a socket" in decode_video(str(sock_path)).message
    assert "a character device" in decode_video("/dev/zero").message
    assert _kind(decode_video("file:///dev/urandom")) == "not_a_video"


def test_truncated_mp4_is_corrupt(make_mp4, tmp_path):
    data = open(make_mp4("full.mp4", t=32), "rb").read()
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: len(data) // 2])  # the moov atom is at the end: cut off
    assert _kind(decode_video(str(p))) == "corrupt"


def test_garbage_after_mp4_header_is_corrupt(tmp_path):
    p = tmp_path / "garbled.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypisom" + np.random.default_rng(0).bytes(4000))
    assert _kind(decode_video(str(p))) == "corrupt"


def test_unknown_codec_is_unsupported(make_mp4, tmp_path):
    data = open(make_mp4("h264.mp4"), "rb").read()
    assert data.count(b"avc1") >= 1
    p = tmp_path / "unknown_codec.mp4"
    p.write_bytes(data.replace(b"avc1", b"zzz1"))  # the sample entry's codec fourcc: no decoder knows it
    assert _kind(decode_video(str(p))) == "unsupported_codec"


def test_too_short(make_mp4):
    assert _kind(decode_video(make_mp4("short.mp4", t=3), S4)) == "too_short"


def test_absurd_frame_size_is_refused_before_decoding(make_mp4):
    path = make_mp4("big.mp4", t=8, h=112, w=112)
    assert _kind(decode_video(path, SamplingConfig(max_source_pixels=100 * 100))) == "too_large"
    assert _kind(probe_video(path, SamplingConfig(max_source_frames=4))) == "too_large"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_decode_through_pillow(tmp_path, fmt):
    frames = moving_square_frames(12, 56, 56)
    p = tmp_path / f"anim.{fmt.lower()}"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(p, format=fmt, save_all=True, append_images=images[1:], duration=100, loop=0)
    clip = decode_video(str(p), S4)
    assert isinstance(clip, VideoClip), clip
    assert clip.info.fps == pytest.approx(10.0, rel=0.05) and clip.info.total_frames == 12
    assert clip.frames.shape == (len(clip.info.indices), 56, 56, 3)
    assert np.abs(clip.frames[0].astype(int) - frames[0].astype(int)).mean() < 12  # palette / lossy


def test_other_containers_decode(tmp_path):
    import av

    p = tmp_path / "clip.mkv"
    frames = moving_square_frames(10)
    with av.open(str(p), "w") as out:
        s = out.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 56, 56, "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    clip = decode_video(str(p), S4)
    assert isinstance(clip, VideoClip) and clip.info.total_frames == 10
    assert clip.frames.shape[0] == len(clip.info.indices) == 8


def test_remote_uri_through_fsspec(make_mp4):
    import fsspec

    data = open(make_mp4("r.mp4"), "rb").read()
    fs = fsspec.filesystem("memory")
    with fs.open("/bucket/r.mp4", "wb") as f:
        f.write(data)
    clip = decode_video("memory://bucket/r.mp4", S4)
    assert isinstance(clip, VideoClip) and clip.frames.shape == (8, 56, 56, 3)
    assert _kind(decode_video("memory://bucket/absent.mp4", S4)) == "missing"


def test_read_all_frames_native_size(make_mp4):
    frames = read_all_frames(make_mp4("n.mp4", t=10, h=50, w=70))
    assert frames.shape == (10, 50, 70, 3)


def _clip_kinds(folder) -> None:
    """One clip of each real kind a decode worker meets: H.264 mp4, animated GIF and WebP, a truncated mp4, text."""
    from raypipe.video.encode import write_mp4

    frames = moving_square_frames(16, 56, 56)
    write_mp4(frames, folder / "a.mp4", 8.0)
    images = [Image.fromarray(f) for f in frames]
    for fmt in ("GIF", "WEBP"):
        images[0].save(folder / f"b.{fmt.lower()}", format=fmt, save_all=True, append_images=images[1:], duration=125)
    data = (folder / "a.mp4").read_bytes()
    (folder / "c_cut.mp4").write_bytes(data[: len(data) // 2])
    (folder / "d_text.mp4").write_bytes(b"not a video " * 100)


@pytest.mark.slow
def test_decoder_memory_stays_flat_over_10000_decodes(tmp_path):
    """10,000 decodes in one process (a decode worker's life): RSS after the first 1,000 vs at the end grows by
    less than 50 MB (decord and PyAV have leaked in some versions; this is the guard)."""
    import json
    import subprocess
    import sys

    clips = tmp_path / "clips"
    clips.mkdir()
    _clip_kinds(clips)
    script = Path(__file__).parent / "decode_memory.py"
    out = subprocess.run([sys.executable, str(script), str(clips), "10000"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["outcomes"] == {"ok": 6000, "corrupt": 2000, "not_a_video": 2000}, report
    assert report["growth_mb"] < 50, report
