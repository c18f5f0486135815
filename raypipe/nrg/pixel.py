"""Pixel-space reward guidance, the baseline Flow-NRG avoids: decode x_t with the VAE, score the frames with the
pixel VideoReward, backpropagate through both to x_t. Same interface as `LatentReward` (`dims`, forward(x, t, text)
-> [B, D]) so `RewardGuidance` drives either; the NRG benchmark times both.

    pixel = PixelReward(gen, VideoReward.from_pretrained(ckpt), prompts, frames=8, size=56)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raypipe.reward.processor import CLIP_MEAN, CLIP_STD, MERGE, PATCH, TEMPORAL


def patches_torch(x01: torch.Tensor) -> torch.Tensor:
    """Differentiable `video_patches`: float [T, 3, H, W] in [0, 1] -> [t·h·w, 3·2·14·14] in Qwen2-VL's layout."""
    t, c, h, w = x01.shape
    if t % TEMPORAL:
        x01 = torch.cat([x01, x01[-1:]], dim=0)
        t += 1
    mean = torch.as_tensor(CLIP_MEAN).view(1, 3, 1, 1).to(x01)
    std = torch.as_tensor(CLIP_STD).view(1, 3, 1, 1).to(x01)
    x = (x01 - mean) / std
    gt, gh, gw = t // TEMPORAL, h // PATCH, w // PATCH
    x = x.reshape(gt, TEMPORAL, 3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 3 * TEMPORAL * PATCH * PATCH)


class PixelReward(nn.Module):
    def __init__(self, gen, reward, prompts: list[str], frames: int, size: int):
        super().__init__()
        import numpy as np

        self.gen, self.reward = gen, reward.eval()
        self.dims = tuple(reward.dimensions)
        self.frames, self.size = frames, size
        dummy = [np.zeros((frames, size, size, 3), np.uint8)] * len(prompts)
        self.batch = reward.processor(dummy, prompts)  # token ids / grids; pixel values replaced per call

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        vae = self.gen.pipeline.vae
        video = vae.decode(x_t * self.gen._std + self.gen._mean).sample.float()  # [B, 3, T, H, W] in [-1, 1]
        x01 = (video.clamp(-1, 1) + 1) / 2
        b, _, t_in, _, _ = x01.shape
        idx = torch.linspace(0, t_in - 1, self.frames).round().long()
        x01 = x01[:, :, idx].permute(0, 2, 1, 3, 4).reshape(b * self.frames, 3, *x01.shape[-2:])
        x01 = F.interpolate(x01, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x01 = x01.reshape(b, self.frames, 3, self.size, self.size)
        pixels = torch.cat([patches_torch(v) for v in x01])
        batch = dict(self.batch)
        batch["pixel_values_videos"] = pixels
        return self.reward(batch)
