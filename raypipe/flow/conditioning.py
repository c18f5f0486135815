"""Image-to-video: the conditioning image travels inside the prompt tensor, so losses, caches, samplers and rewards
that pass a family's prompt along never see it.

    text = gen.encode_prompts(["a red circle moving left"], images=first_frames)   # uint8 [B, H, W, 3]
    v_hat = gen.velocity(z_t, t, text)           # frame 0 is the image's latent, its timestep 0
    uncond = empty_prompt_like(gen.encode_prompts([""]), text)   # CFG drops the words, keeps the image

Layout: a family's prompt tensor [B, R, D] (R rows: Wan's max_text_len; HunyuanVideo's 1 + L; ...) gets one header
row (C, T, H', W', K, N, E, K2) and then the normalised image latent [C, T, H', W'] flattened into K rows of width D
(zero padded), then optional image-encoder states [N, E] in K2 rows. A tensor with exactly R rows has no image.

Two ways of conditioning, as the diffusers image-to-video pipelines do:
- replace (Wan2.2 TI2V, LTX-Video): T = 1, the image's latent. The VAEs are causal (the first latent frame depends
  on the first frame only), so the first latent frame is replaced by it and its tokens get timestep 0; the loss
  there is nil — `first_frame_velocity` returns the velocity of the straight path from z_t to the image, so Euler
  sampling ends on the image exactly and the flow error on that frame is zero whatever the transformer says.
- concat (Wan2.1 I2V, Wan2.2 I2V-A14B): T = the video's latent frames, the latent of the image followed by black
  frames; the transformer takes [z_t, first-frame mask, that latent] along channels (`concat_condition`) and,
  for Wan2.1, the CLIP image encoder's states as N x E. Every frame is generated and trained.
"""

from __future__ import annotations

import numpy as np
import torch

T_MIN = 1e-4  # the known frame's velocity (z_t - c) / t is taken at t >= T_MIN


def pack_image(text: torch.Tensor, latent: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """[B, R, D] prompt + image latent [B, C, T, H', W'] (+ image-encoder states [B, N, E], Wan2.1 I2V's CLIP) ->
    [B, R + 1 + K + K2, D] float32: a header row (C, T, H', W', K, N, E, K2), then each tensor flattened into rows."""
    b, _, d = text.shape
    if latent.dim() != 5 or latent.shape[0] != b:
        raise ValueError(f"image latent must be [B={b}, C, T, H, W], got {tuple(latent.shape)}")
    if embeds is not None and (embeds.dim() != 3 or embeds.shape[0] != b):
        raise ValueError(f"image embeddings must be [B={b}, N, E], got {tuple(embeds.shape)}")
    if d < 8:
        raise ValueError(f"prompt width {d} is too narrow to carry an image header")

    def rows(x):
        flat = x.reshape(b, -1).float().to(text.device)
        k = -(-flat.shape[1] // d)
        return k, torch.nn.functional.pad(flat, (0, k * d - flat.shape[1])).view(b, k, d)

    k, body = rows(latent)
    n, e, k2, extra = 0, 0, 0, body[:, :0]
    if embeds is not None:
        (n, e), (k2, extra) = embeds.shape[1:], rows(embeds)
    header = torch.zeros(b, 1, d, device=text.device)
    header[:, 0, :8] = torch.tensor([float(v) for v in (*latent.shape[1:], k, n, e, k2)])
    return torch.cat([text.float(), header, body, extra], dim=1)


def split_conditions(text: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(prompt [B, rows, D], image latent [B, C, T, H', W'] or None, image-encoder states [B, N, E] or None)."""
    if text.shape[1] == rows:
        return text, None, None
    if text.shape[1] < rows + 2:
        raise ValueError(f"a prompt tensor has {rows} rows, or more with an image; got {tuple(text.shape)}")
    c, t, h, w, k, n, e, k2 = (int(v) for v in text[0, rows, :8].round().tolist())
    b, d = text.shape[0], text.shape[2]
    if min(c, t, h, w, k) < 1 or text.shape[1] != rows + 1 + k + k2 or c * t * h * w > k * d or n * e > k2 * d:
        raise ValueError(f"malformed image header {text[0, rows, :8].tolist()} for a prompt of {tuple(text.shape)}")
    latent = text[:, rows + 1 : rows + 1 + k].reshape(b, -1)[:, : c * t * h * w].reshape(b, c, t, h, w)
    embeds = text[:, rows + 1 + k :].reshape(b, -1)[:, : n * e].reshape(b, n, e) if k2 else None
    return text[:, :rows], latent, embeds


def split_image(text: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt [B, rows, D], image latent or None) of a packed prompt tensor."""
    words, latent, _ = split_conditions(text, rows)
    return words, latent


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
            "(image-to-video: Wan2.1 I2V, Wan2.2 TI2V-5B / I2V-A14B, LTX-Video)"
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


def concat_condition(z_t: torch.Tensor, cond: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Wan2.1 I2V / Wan2.2 I2V-A14B's transformer input [z_t, mask, cond] along channels (WanImageToVideoPipeline):
    `cond` is the latent of the image followed by black frames, the mask (in_channels − 2·C channels, the VAE's
    temporal factor) is 1 on the first latent frame and 0 after it."""
    b, c, t, h, w = z_t.shape
    if cond.shape != z_t.shape:
        raise ValueError(f"conditioning latent {tuple(cond.shape)} does not fit latents {tuple(z_t.shape)}")
    mask = z_t.new_zeros(b, in_channels - 2 * c, t, h, w)
    mask[:, :, 0] = 1.0
    return torch.cat([z_t, mask, cond.to(z_t.device, z_t.dtype)], dim=1)


def encode_with_images(gen, prompts: list[str], images=None, frames: int | None = None) -> torch.Tensor:
    """`gen.encode_prompts(prompts)`, with each prompt's conditioning image (uint8 [B, H, W, 3]) when given; a
    family that conditions on the whole clip (Wan2.1 I2V) also gets the clip's pixel `frames`."""
    if images is None:
        return gen.encode_prompts(prompts)
    if not getattr(gen, "takes_image", False):
        return with_image(gen, gen.encode_prompts(prompts), images)  # the clear "text-to-video only" error
    if getattr(gen, "image_mode", "replace") == "concat":
        return gen.encode_prompts(prompts, images=images, frames=frames)
    return gen.encode_prompts(prompts, images=images)


def pixel_frames(gen, latent_frames: int) -> int:
    """The clip length whose latents have `latent_frames` frames (1 + (T' − 1)·temporal factor)."""
    return 1 + (latent_frames - 1) * int(getattr(gen, "temporal", 1))


def start_on_image(gen, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Training latents of a family that conditions by replacing the first frame (Wan2.2 TI2V, LTX-Video): the first
    latent frame set to the prompt's image latent, as the generator's own samples start. A pair's loser was
    conditioned on the same image but its first frame can differ a little (H.264): left as it is, its flow error
    there would grow as 1/t. Other families and text-only prompts: `z` unchanged."""
    if getattr(gen, "image_mode", None) != "replace":
        return z
    _, image = split_image(text, gen.max_text_len)
    return z if image is None else condition_first_frame(z, image)


def wan_inputs(z_t: torch.Tensor, t: torch.Tensor, image, config, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A Wan transformer's (hidden states, float32 timesteps 1000·t) on `device` for latents z_t and a prompt's
    image latent (None: text only). By the transformer's input channels: as many as the latents — Wan2.2 TI2V, frame 0
    replaced and its tokens at timestep 0 ([B, tokens] timesteps); more — Wan2.1 I2V / Wan2.2 I2V-A14B,
    [z_t, mask, condition] along channels. The timestep stays float32: diffusers embeds it sinusoidally before
    casting, whereas 1000·t in bf16 would be rounded to steps of up to 4."""
    z_t = z_t.to(device)
    timestep = (1000.0 * t).to(device, torch.float32)
    if image is None:
        return z_t, timestep
    image, in_channels = image.to(device), int(config.in_channels)
    if in_channels > z_t.shape[1]:
        return concat_condition(z_t, image, in_channels), timestep
    _, ph, pw = config.patch_size
    hidden = condition_first_frame(z_t, image)
    return hidden, per_token_times(timestep, z_t.shape[2], (z_t.shape[3] // ph) * (z_t.shape[4] // pw))
