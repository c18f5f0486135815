"""Image-to-video: the conditioning image travels inside the prompt tensor, so losses, caches, samplers and rewards
that pass a family's prompt along never see it.

    text = gen.encode_prompts(["a red circle moving left"], images=first_frames)   # uint8 [B, H, W, 3]
    v_hat = gen.velocity(z_t, t, text)           # frame 0 is the image's latent, its timestep 0
    uncond = empty_prompt_like(gen.encode_prompts([""]), text)   # CFG drops the words, keeps the image

Layout: a family's prompt tensor [B, R, D] (R rows: Wan's max_text_len; HunyuanVideo's 1 + L; ...) gets one header
row (C, 1, H', W', rows that follow) and then the normalised image latent [C, 1, H', W'] flattened into rows of width
D (zero padded). A tensor with exactly R rows has no image. The image is the first frame of the video (the VAEs
are causal: the first latent frame depends on the first frame only), as Wan2.2 TI2V and LTX-Video condition:
the first latent frame is replaced by the image's latent, its tokens get timestep 0, and the loss there is nil —
`first_frame_velocity` returns the velocity of the straight path from z_t to the image, so Euler sampling ends
on the image exactly and the flow error on that frame is zero whatever the transformer says.
"""

from __future__ import annotations

import numpy as np
import torch

T_MIN = 1e-4  # the known frame's velocity (z_t - c) / t is taken at t >= T_MIN


def pack_image(text: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """[B, R, D] prompt + [B, C, 1, H', W'] image latent -> [B, R + 1 + K, D] (float32)."""
    b, _, d = text.shape
    if latent.dim() != 5 or latent.shape[0] != b or latent.shape[2] != 1:
        raise ValueError(f"image latent must be [B={b}, C, 1, H, W], got {tuple(latent.shape)}")
    if d < 5:
        raise ValueError(f"prompt width {d} is too narrow to carry an image header")
    flat = latent.reshape(b, -1).float().to(text.device)
    k = -(-flat.shape[1] // d)
    header = torch.zeros(b, 1, d, device=text.device)
    header[:, 0, :5] = torch.tensor([float(latent.shape[1]), 1.0, *map(float, latent.shape[3:]), float(k)])
    body = torch.nn.functional.pad(flat, (0, k * d - flat.shape[1])).view(b, k, d)
    return torch.cat([text.float(), header, body], dim=1)


def split_image(text: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt [B, rows, D], image latent [B, C, 1, H', W'] or None) of a packed prompt tensor."""
    if text.shape[1] == rows:
        return text, None
    if text.shape[1] < rows + 2:
        raise ValueError(f"a prompt tensor has {rows} rows, or more with an image; got {tuple(text.shape)}")
    c, one, h, w, k = (int(v) for v in text[0, rows, :5].round().tolist())
    if one != 1 or text.shape[1] != rows + 1 + k or c * h * w > k * text.shape[2]:
        raise ValueError(f"malformed image header {text[0, rows, :5].tolist()} for a prompt of {tuple(text.shape)}")
    latent = text[:, rows + 1 :].reshape(text.shape[0], -1)[:, : c * h * w].reshape(-1, c, 1, h, w)
    return text[:, :rows], latent


def empty_prompt_like(uncond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The unconditional input of every sample of `text` for classifier-free guidance: `uncond` (the empty prompt,
    [1, R, D]) with each sample's image rows kept (image-to-video CFG drops the words only)."""
    uncond = uncond.to(text.device, text.dtype)
    if uncond.shape[1:] == text.shape[1:]:
        return uncond.expand_as(text)
    rows = uncond.shape[1]
    return torch.cat([uncond.expand(text.shape[0], rows, text.shape[2]), text[:, rows:]], dim=1)


def with_image(gen, text: torch.Tensor, images) -> torch.Tensor:
    """`text` with each sample's conditioning image packed in (uint8 [B, H, W, 3]; None: text only)."""
    if images is None:
        return text
    if not getattr(gen, "takes_image", False):
        raise ValueError(
            f"this {gen.name} generator is text-to-video only: it takes no conditioning image "
            "(image-to-video: Wan2.2 TI2V-5B or LTX-Video)"
        )
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != text.shape[0] or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [B={text.shape[0]}, H, W, 3], got {images.shape}")
    return pack_image(text, gen.encode_videos(images[:, None]))


def condition_first_frame(z_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """z_t with its first latent frame replaced by the image's latent."""
    if cond.shape[0] != z_t.shape[0] or cond.shape[1] != z_t.shape[1] or cond.shape[3:] != z_t.shape[3:]:
        raise ValueError(f"image latent {tuple(cond.shape)} does not fit latents {tuple(z_t.shape)}")
    return torch.cat([cond.to(z_t.device, z_t.dtype), z_t[:, :, 1:]], dim=2)


def per_token_times(timestep: torch.Tensor, frames: int, tokens_per_frame: int) -> torch.Tensor:
    """[B] timesteps -> [B, frames · tokens_per_frame] with the first frame's tokens at 0 (clean)."""
    ts = timestep.view(-1, 1).expand(-1, frames * tokens_per_frame).clone()
    ts[:, :tokens_per_frame] = 0.0
    return ts


def first_frame_velocity(v_hat: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """v_hat with the first frame's velocity set to that of the straight path from z_t to the image:
    (z_t − c) / t, which equals ε − c whenever z_t = (1 − t)·c + t·ε."""
    t = t.to(z_t.device, torch.float32).clamp_min(T_MIN).view(-1, 1, 1, 1, 1)
    known = (z_t[:, :, :1].float() - cond.to(z_t.device).float()) / t
    return torch.cat([known.to(v_hat.device), v_hat[:, :, 1:]], dim=2)
