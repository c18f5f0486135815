"""Decoding sampled frames, with every failure classified and returned as a value (SPEC §2.3, §7).

    result = decode_video("clip.mp4", SamplingConfig(fps=2))
    if isinstance(result, VideoError): ...  # result.kind in ERROR_KINDS

Order of work for one video: check the source (exists, non-empty), sniff its first bytes, read the header with
PyAV (cheap, robust: sizes, codec, stream presence; refuses absurd sizes before anything is decoded), then decode
ONLY the sampled frames with decord `get_batch`. Formats decord cannot read (animated GIF/WebP, other containers)
go through PyAV, then Pillow. Nothing here raises for a bad video; programming errors still raise.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np

from raypipe.config import SamplingConfig
from raypipe.video.sampling import SamplingError, check_convention, plan_frames, plan_size
from raypipe.video.source import SourceError, open_source

ERROR_KINDS = (
    "missing",  # no such file / object
    "empty",  # zero bytes, or a container with no frames
    "not_a_video",  # readable, but not a video (text, still image, audio only)
    "corrupt",  # looks like a video container but cannot be decoded (truncated, damaged)
    "too_short",  # fewer frames than sampling needs (min_frames)
    "too_large",  # absurd frame size, frame count or aspect ratio
    "unsupported_codec",  # a video stream whose codec no decoder here reads
    "io_error",  # permission denied, network failure, ...
)

# First bytes of containers we know are videos: a file that starts like this but fails is `corrupt`.
_VIDEO_MAGIC = (
    (4, b"ftyp"),  # mp4 / mov / 3gp (offset 4)
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"GIF8"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # mpeg-ps
    (0, b"OggS"),
)
_STILL_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


@dataclass
class VideoError:
    kind: str
    message: str
    uri: str = ""

    def __post_init__(self):
        assert self.kind in ERROR_KINDS, self.kind


@dataclass
class VideoInfo:
    """What the header and frame index say, plus the sampling plan (no frames decoded)."""

    uri: str
    fps: float
    total_frames: int
    source_height: int
    source_width: int
    codec: str
    indices: list[int] = field(default_factory=list)
    height: int = 0  # output size after resizing
    width: int = 0


@dataclass
class VideoClip:
    info: VideoInfo
    frames: np.ndarray  # uint8 [T, H, W, 3], T = len(info.indices)
    backend: str  # decord | pyav | pillow


DecodeResult = VideoClip | VideoError
logger = logging.getLogger(__name__)
_NO_FRAMES = np.zeros((0, 0, 0, 3), np.uint8)


def _looks_like(head: bytes) -> str:
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"GIF8"):
        return "gif"
    if head.startswith(b"RIFF") and head[8:11] == b"AVI":
        return "video"
    if any(head[off : off + len(m)] == m for off, m in _VIDEO_MAGIC):
        return "video"
    if any(head.startswith(m) for m in _STILL_IMAGE_MAGIC):
        return "image"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "video"  # mpeg-ts
    return "unknown"


def _failure_kind(kind_guess: str) -> str:
    return "corrupt" if kind_guess in ("video", "gif", "webp") else "not_a_video"


def _plan(info: VideoInfo, sampling: SamplingConfig, native: bool = False) -> VideoInfo | VideoError:
    if info.source_height * info.source_width > sampling.max_source_pixels:
        return VideoError(
            "too_large",
            f"frame size {info.source_height}x{info.source_width} exceeds "
            f"max_source_pixels={sampling.max_source_pixels}",
            info.uri,
        )
    if info.total_frames > sampling.max_source_frames:
        return VideoError(
            "too_large", f"{info.total_frames} frames exceed max_source_frames={sampling.max_source_frames}", info.uri
        )
    try:
        info.indices = plan_frames(info.total_frames, info.fps, sampling)
        if native:
            info.height, info.width = info.source_height, info.source_width
        else:
            info.height, info.width = plan_size(info.source_height, info.source_width, sampling)
    except SamplingError as e:
        return VideoError(e.kind, str(e), info.uri)
    return info


def _pyav_header(src, uri: str, guess: str) -> tuple[VideoInfo, object] | VideoError:
    import av

    try:
        container = av.open(src if isinstance(src, str) else io.BytesIO(src))
    except av.error.FFmpegError as e:
        return VideoError(_failure_kind(guess), f"cannot open as a video: {e}", uri)
    try:
        if not container.streams.video:
            kind = "corrupt" if guess == "video" and not container.streams.audio else "not_a_video"
            return VideoError(kind, "no video stream in the container", uri)
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:  # FFmpeg knows no codec for this stream's tag
            tag = getattr(stream, "codec_tag", None) or "unknown"
            return VideoError("unsupported_codec", f"no decoder for the video stream (codec tag {tag!r})", uri)
        if guess == "image" or (stream.frames == 1 and guess not in ("video", "gif", "webp")):
            return VideoError("not_a_video", f"a still image ({ctx.name}), not a video", uri)
        try:
            av.codec.Codec(ctx.name, "r")
        except Exception:  # noqa: BLE001 - PyAV raises several types for unknown codecs
            return VideoError("unsupported_codec", f"no decoder for codec {ctx.name!r}", uri)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frames = int(stream.frames or 0)
        if frames <= 0 and stream.duration and stream.time_base and fps > 0:
            frames = int(round(float(stream.duration * stream.time_base) * fps))
        return VideoInfo(uri, fps, frames, int(ctx.height), int(ctx.width), ctx.name), container
    except Exception:
        container.close()
        raise


def resize_frames(frames: np.ndarray, height: int, width: int, convention: str = "raypipe") -> np.ndarray:
    """uint8 [T, H, W, 3] resized to height x width; unchanged when already that size (in both conventions).

    "raypipe": PIL bicubic per frame. "qwen": `_resize_torch_bicubic_aa`, what qwen-vl-utils 0.0.8 does.
    """
    check_convention(convention)
    if frames.shape[1:3] == (height, width):  # torchvision's resize returns its input unchanged too
        return np.ascontiguousarray(frames)
    if convention == "qwen":
        return _resize_torch_bicubic_aa(frames, height, width)
    from PIL import Image

    out = np.empty((frames.shape[0], height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))
    return out


def _resize_torch_bicubic_aa(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision `transforms.functional.resize(video, [h, w], BICUBIC, antialias=True)` on a uint8 TCHW tensor,
    as qwen-vl-utils 0.0.8 `fetch_video` calls it: the tensor path casts to float32, interpolates (bicubic,
    align_corners=False, antialias), clamps to [0, 255], rounds (half to even) and casts back to uint8. The TCHW
    tensor is a permuted view of the decoded THWC array, as qwen's decord reader makes it."""
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)
    out = torch.nn.functional.interpolate(
        video, size=[height, width], mode="bicubic", align_corners=False, antialias=True
    )
    out = out.clamp(min=0, max=255).round().to(torch.uint8)
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())


def _decode_decord(
    src, info: VideoInfo, sampling: SamplingConfig, native: bool, decode: bool
) -> VideoClip | VideoError | None:
    """None when decord cannot read the file (the caller tries PyAV next, which also classifies damage)."""
    import decord

    try:
        reader = decord.VideoReader(src if isinstance(src, str) else io.BytesIO(src), num_threads=1)
    except Exception:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError for everything
        return None
    try:
        info.total_frames, info.fps = len(reader), float(reader.get_avg_fps())
        planned = _plan(info, sampling, native)
        if isinstance(planned, VideoError):
            return planned
        if not decode:
            return VideoClip(planned, _NO_FRAMES, "decord")
        try:
            frames = reader.get_batch(planned.indices).asnumpy()
        except Exception:  # noqa: BLE001 - also decord's own bugs (e.g. some widths < 32): PyAV decides
            return None
    finally:
        del reader
    return VideoClip(planned, resize_frames(frames, planned.height, planned.width, sampling.convention), "decord")


def _decode_pyav(
    container, info: VideoInfo, sampling: SamplingConfig, native: bool, decode: bool
) -> VideoClip | VideoError:
    import av

    stream = container.streams.video[0]
    try:
        if info.total_frames <= 0:  # unknown count (gif, some webm): count in a first pass
            info.total_frames = sum(1 for _ in container.decode(stream))
            container.seek(0)
        planned = _plan(info, sampling, native)
        if isinstance(planned, VideoError):
            return planned
        if not decode:
            return VideoClip(planned, _NO_FRAMES, "pyav")
        wanted = {}
        for idx in planned.indices:
            wanted.setdefault(idx, []).append(len(wanted))
        picked: dict[int, np.ndarray] = {}
        last = planned.indices[-1]
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                picked[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    except av.error.FFmpegError as e:
        return VideoError("corrupt", f"decoding failed: {e}", info.uri)
    missing = [i for i in planned.indices if i not in picked]
    if missing:
        return VideoError(
            "corrupt",
            f"the stream ended before frame {missing[0]} (header said {planned.total_frames} frames)",
            info.uri,
        )
    frames = np.stack([picked[i] for i in planned.indices])
    return VideoClip(planned, resize_frames(frames, planned.height, planned.width, sampling.convention), "pyav")


def _decode_pillow(
    src, uri: str, sampling: SamplingConfig, guess: str, native: bool = False, decode: bool = True
) -> VideoClip | VideoError:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        image = Image.open(src if isinstance(src, str) else io.BytesIO(src))
    except (UnidentifiedImageError, OSError) as e:
        return VideoError(_failure_kind(guess), f"cannot open as an animation: {e}", uri)
    with image:
        n = int(getattr(image, "n_frames", 1))
        if n <= 1:
            return VideoError("not_a_video", f"a still {image.format} image, not a video", uri)
        if n > sampling.max_source_frames or image.width * image.height > sampling.max_source_pixels:
            return _plan(VideoInfo(uri, 1.0, n, image.height, image.width, "image"), sampling, native)
        # Frame durations vary per frame (GIF stores centiseconds): fps from their mean.
        durations, rgb = [], []
        try:
            for frame in ImageSequence.Iterator(image):
                durations.append(float(frame.info.get("duration") or 100.0))
                rgb.append(np.asarray(frame.convert("RGB")) if decode else None)
        except OSError as e:
            return VideoError("corrupt", f"decoding the animation failed: {e}", uri)
        info = VideoInfo(
            uri,
            1000.0 / max(float(np.mean(durations)), 1.0),
            len(durations),
            image.height,
            image.width,
            (image.format or "image").lower(),
        )
    planned = _plan(info, sampling, native)
    if isinstance(planned, VideoError):
        return planned
    if not decode:
        return VideoClip(planned, _NO_FRAMES, "pillow")
    frames = np.stack([rgb[i] for i in planned.indices])
    return VideoClip(planned, resize_frames(frames, planned.height, planned.width, sampling.convention), "pillow")


def _open(uri: str, filesystem=None) -> tuple[object, bytes] | VideoError:
    try:
        return open_source(uri, filesystem)
    except SourceError as e:
        return VideoError(e.kind, str(e), uri)


def probe_video(uri: str, sampling: SamplingConfig | None = None, filesystem=None) -> VideoInfo | VideoError:
    """The sampling plan for a video (indices, output size) from its header and frame index; no decoding."""
    clip = decode_video(uri, sampling, filesystem, decode=False)
    return clip.info if isinstance(clip, VideoClip) else clip


def decode_video(
    uri: str, sampling: SamplingConfig | None = None, filesystem=None, decode: bool = True, native: bool = False
) -> DecodeResult:
    """Decode the sampled frames of one video. Never raises for a bad video: returns a VideoError.

    `decode=False` stops after planning (empty frames); `native=True` keeps the source frame size.
    """
    sampling = sampling or SamplingConfig()
    try:
        return _decode_video(uri, sampling, filesystem, decode, native)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a decoder library failing in a way we did not foresee
        logger.warning("unexpected failure decoding %s", uri, exc_info=True)
        return VideoError("corrupt", f"the decoder failed unexpectedly: {type(e).__name__}: {e}", uri)


def _decode_video(uri: str, sampling: SamplingConfig, filesystem, decode: bool, native: bool) -> DecodeResult:
    opened = _open(uri, filesystem)
    if isinstance(opened, VideoError):
        return opened
    src, head = opened
    guess = _looks_like(head)
    if guess in ("gif", "webp"):
        return _decode_pillow(src, uri, sampling, guess, native, decode)
    header = _pyav_header(src, uri, guess)
    if isinstance(header, VideoError):
        if guess == "image":
            return header
        # A container PyAV cannot open may still be an animation Pillow reads.
        fallback = _decode_pillow(src, uri, sampling, guess, native, decode)
        return fallback if isinstance(fallback, VideoClip) else header
    info, container = header
    try:
        if info.source_height * info.source_width > sampling.max_source_pixels or (
            info.total_frames > sampling.max_source_frames
        ):
            return _plan(info, sampling, native)  # refuse before a decoder allocates anything
        clip = _decode_decord(src, info, sampling, native, decode)
        if clip is None:
            clip = _decode_pyav(container, info, sampling, native, decode)
        return clip
    finally:
        container.close()


def read_all_frames(uri: str, filesystem=None, max_frames: int = 10_000) -> np.ndarray | VideoError:
    """Every frame at native size (for the oracle and for tests); a VideoError on failure."""
    sampling = SamplingConfig(all_frames=True, min_frames=2, max_frames=max_frames)
    clip = decode_video(uri, sampling, filesystem, native=True)
    return clip if isinstance(clip, VideoError) else clip.frames


def read_image(uri: str, height: int, width: int, filesystem=None) -> np.ndarray | VideoError:
    """An image-to-video conditioning image, uint8 [height, width, 3]: a still (PNG, JPEG, WebP, ...) or the first
    frame of a video, resized as generator clips are. A VideoError (never raised) for anything unreadable."""
    from PIL import Image, UnidentifiedImageError

    opened = _open(uri, filesystem)
    if isinstance(opened, VideoError):
        return opened
    src, _ = opened
    try:
        with Image.open(src if isinstance(src, str) else io.BytesIO(src)) as image:
            if int(getattr(image, "n_frames", 1)) <= 1:
                return resize_frames(np.asarray(image.convert("RGB"))[None], height, width)[0]
    except (UnidentifiedImageError, OSError):
        pass  # not a picture: a video's first frame
    frames = read_all_frames(uri, filesystem)
    if isinstance(frames, VideoError):
        return frames
    return resize_frames(frames[:1], height, width)[0]
