"""VideoReward training pieces without Ray: decoded pairs -> model inputs and targets, the configured loss, and
held-out metrics. `raypipe.recipes.train_reward` runs them inside its worker loop."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import torch

from raypipe.config import SamplingConfig
from raypipe.data.tables import frames_of, split_errors
from raypipe.reward.losses import regression_loss, reward_loss
from raypipe.reward.metrics import pairwise_report


def pairs_to_inputs(batch, processor, dimensions, with_mos: bool = False):
    """(model inputs for [A..., B...], targets, number of error rows skipped).

    targets: `y` [n, D] (+1 A, -1 B, 0 tie), `mask` [n, D] (labelled); with `with_mos` also `mos` [2n, D] and
    `mos_mask` for regression on the SPEC §2.1 `MOS_<side>_<DIM>` columns (A rows first, then B)."""
    good, bad = split_errors(batch)
    frames_a, frames_b = frames_of(good, "A"), frames_of(good, "B")
    prompts = good.column("prompt").to_pylist()
    y = torch.zeros((good.num_rows, len(dimensions)), dtype=torch.long)
    mask = torch.zeros_like(y, dtype=torch.bool)
    for j, dim in enumerate(dimensions):
        col = good.column(f"y_{dim}")
        valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
        vals = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        y[:, j] = torch.from_numpy(vals)
        mask[:, j] = torch.from_numpy(valid)
    targets = {"y": y, "mask": mask}
    if with_mos:
        mos = torch.full((2 * good.num_rows, len(dimensions)), float("nan"))
        for k, side in enumerate("AB"):
            for j, dim in enumerate(dimensions):
                name = f"MOS_{side}_{dim}"
                if name in good.column_names:
                    values = good.column(name).cast("float64").to_numpy(zero_copy_only=False)
                    mos[k * good.num_rows : (k + 1) * good.num_rows, j] = torch.from_numpy(values.astype(np.float32))
        targets["mos_mask"] = torch.isfinite(mos)
        targets["mos"] = torch.nan_to_num(mos)
    inputs = processor(frames_a + frames_b, prompts + prompts) if good.num_rows else None
    return inputs, targets, bad.num_rows


def batch_loss(kind, rewards, targets, theta, device, weights=None):
    """The configured loss (bt | btt | regression) of rewards [2n, D] (A rows, then B) against `targets`."""
    if kind == "regression":
        return regression_loss(rewards, targets["mos"].to(device), targets["mos_mask"].to(device), weights)
    n = targets["y"].shape[0]
    return reward_loss(
        kind, rewards[:n], rewards[n:], targets["y"].to(device), targets["mask"].to(device), theta, weights
    )


def validation_metrics(margins, labels, masks, dimensions) -> dict:
    """`pairwise_report` per dimension over the labelled pairs (margins r_A - r_B [n, D])."""
    out = {}
    for j, dim in enumerate(dimensions):
        sel = masks[:, j].astype(bool)
        out[dim] = pairwise_report(labels[sel, j], margins[sel, j])
    return out


# --- continuing from a checkpoint (train-reward init_from) -------------------------------------------------
def init_conventions(model_cfg, init_from: str | None, base: str | None, template_file: str | None):
    """(model config, sampling or None, template file) for a run. With `init_from` (either layout) the checkpoint's
    conventions replace the configured ones: dimensions, context-agnostic set, head, instruction, template,
    positions, per-dimension head, base path, and its frame sampling; LoRA / what trains stay this run's. The
    template file (template_file, else $RAYPIPE_VIDEOALIGN_TEMPLATE) is read now when the template needs it."""
    import dataclasses

    from raypipe.reward.model import checkpoint_config
    from raypipe.reward.scoring import resolve_sampling
    from raypipe.reward.videoalign import template_path

    sampling: SamplingConfig | None = None
    if init_from:
        init = checkpoint_config(init_from, base)
        keep = ("dimensions", "context_agnostic", "head", "instruction", "template", "positions", "head_per_dimension")
        model_cfg = dataclasses.replace(
            model_cfg, name_or_path=init.name_or_path, **{f: getattr(init, f) for f in keep}
        )
        sampling, _ = resolve_sampling(init_from, None)
    return model_cfg, sampling, template_path(template_file, check=model_cfg.template == "videoalign")


def model_from_init(init_from: str, model_cfg, base: str | None, template_file: str | None):
    """The checkpoint's weights (LoRA merged) with this run's trainable parts: fresh LoRA, vision tower, rows, head."""
    import dataclasses

    from raypipe.reward.model import VideoReward

    model = VideoReward.from_pretrained(init_from, dtype=model_cfg.dtype, base=base, template_file=template_file)
    model.cfg = dataclasses.replace(
        model.cfg,
        lora=model_cfg.lora,
        train_vision=model_cfg.train_vision,
        train_language_model=model_cfg.train_language_model,
    )
    model.configure_trainable()
    return model.train()
