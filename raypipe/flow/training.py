"""One training step of the generator, without Ray: a batch of clips or cached latents -> the loss of the
configured algorithm (SPEC §5). `raypipe.recipes.train_flow` runs it inside its worker loop.

Per batch: frozen VAE + text encoder (or the latent cache's columns) -> shared noise and time -> the
transformer's velocity (LoRA policy; for Flow-DPO also the reference = adapters disabled, no_grad) -> loss.
"""

from __future__ import annotations

import torch

from raypipe.data.tables import clips_of, suffix, tensor_of
from raypipe.flow.conditioning import encode_with_images, start_on_image


def latents_of(gen, batch, key: str) -> torch.Tensor:
    """Normalised latents of a batch: from the latent cache (`latents<sfx>`) or by encoding `frames<sfx>`."""
    sfx = suffix(key)
    if f"latents{sfx}" in batch.column_names:
        return torch.from_numpy(tensor_of(batch, f"latents{sfx}")).float()
    return gen.encode_videos(clips_of(batch, f"frames{sfx}"))


def text_of(gen, batch, prompts: list[str], dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Prompt embeddings (cached `text` column or the text encoder, with the `image` column's conditioning images
    for image-to-video), a `dropout` share replaced by the empty prompt's embedding (classifier-free guidance)."""
    kept = drop_prompts(prompts, dropout, generator)
    if "text" not in batch.column_names:
        if "image" in batch.column_names:  # image-to-video (decoded clips): the conditioning images, uint8 [B, H, W, 3]
            column = "frames_w" if "frames_w" in batch.column_names else "frames"
            frames = clips_of(batch.slice(0, 1), column).shape[1]  # the clip length, from one row
            return encode_with_images(gen, kept, tensor_of(batch, "image"), frames)
        return gen.encode_prompts(kept)
    text = torch.from_numpy(tensor_of(batch, "text")).float()
    dropped = [i for i, p in enumerate(kept) if p == "" and prompts[i] != ""]
    if dropped:
        if not hasattr(gen, "_uncond"):
            gen._uncond = gen.encode_prompts([""]).float()
        text[dropped, : gen._uncond.shape[1]] = gen._uncond[0]  # an image-to-video prompt keeps its image
    return text


def drop_prompts(prompts: list[str], share: float, generator: torch.Generator) -> list[str]:
    """Replace a `share` of prompts by "" (so the model also learns the unconditional velocity for CFG)."""
    if share <= 0:
        return list(prompts)
    keep = torch.rand(len(prompts), generator=generator) >= share
    return [p if k else "" for p, k in zip(prompts, keep.tolist())]


def step_loss(gen, engine, t_cfg, batch, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The loss of one batch (a pyarrow batch of the Ray Data shard) for the configured algorithm, and its stats."""
    prompts = batch.column("prompt").to_pylist()
    if t_cfg.algo == "dpo":
        tensors = {
            "z_w": latents_of(gen, batch, "w"),
            "z_l": latents_of(gen, batch, "l"),
            "text": text_of(gen, batch, prompts, 0.0, generator),
        }
        if t_cfg.lambda_sft and "is_real" in batch.column_names:
            tensors["is_real"] = torch.tensor(batch.column("is_real").to_pylist(), dtype=torch.bool)
    else:
        tensors = {
            "z": latents_of(gen, batch, ""),
            "text": text_of(gen, batch, prompts, t_cfg.prompt_dropout, generator),
        }
        if t_cfg.algo == "lift":
            tensors["weight"] = torch.tensor(batch.column("weight").to_pylist(), dtype=torch.float32)
            if "is_real" in batch.column_names:
                tensors["is_real"] = torch.tensor(batch.column("is_real").to_pylist(), dtype=torch.bool)
        if t_cfg.algo == "rwr":
            tensors["reward"] = torch.tensor(batch.column("reward").to_pylist(), dtype=torch.float32)
            if t_cfg.lambda_real and "is_real" in batch.column_names:
                tensors["is_real"] = torch.tensor(batch.column("is_real").to_pylist(), dtype=torch.bool)
    return algo_loss(gen, engine, t_cfg, tensors, generator)


def algo_loss(gen, engine, t_cfg, tensors: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The loss of one batch given as tensors (see raypipe.flow.losses): `z_w`, `z_l`, `text` (+ optional `is_real`
    with train.lambda_sft) for Flow-DPO;
    `z`, `text` (+ `reward`, optional `is_real` for Flow-RWR; `weight`, optional `is_real` for LiFT) otherwise.
    Noise and t are drawn on the CPU from `generator` (the same on any device), then everything moves to the
    transformer's device."""
    from raypipe.flow.lora import reference
    from raypipe.flow.losses import (
        beta_t,
        dpo_loss,
        dpo_sft_loss,
        flow_error,
        gen_t_range,
        noised,
        rwr_loss,
        sample_t,
        sft_loss,
    )

    algo, device = t_cfg.algo, gen.device
    if algo == "dpo":
        text = tensors["text"].to(device)
        z_w, z_l = (start_on_image(gen, tensors[k].to(device), text) for k in ("z_w", "z_l"))
        n = z_w.shape[0]
        t = sample_t(n, generator, gen.shift, t_range=gen_t_range(gen))
        eps = torch.randn(z_w.shape, generator=generator).to(device)  # ONE eps and ONE t per pair, for w and l
        t = t.to(device)
        xt_w, v_w = noised(z_w, eps, t)
        xt_l, v_l = noised(z_l, eps, t)
        xt, v, tt, tx = torch.cat([xt_w, xt_l]), torch.cat([v_w, v_l]), torch.cat([t, t]), torch.cat([text, text])
        err = flow_error(gen.velocity(xt, tt, tx, model=engine), v)
        with reference(engine.module):
            err_ref = flow_error(gen.velocity(xt, tt, tx, model=engine), v)
        beta = beta_t(t_cfg.beta, t, t_cfg.beta_schedule)
        if "is_real" in tensors:  # real videos mixed in (train.lambda_sft)
            return dpo_sft_loss(err[:n], err_ref[:n], err[n:], err_ref[n:], beta, tensors["is_real"], t_cfg.lambda_sft)
        return dpo_loss(err[:n], err_ref[:n], err[n:], err_ref[n:], beta)
    text = tensors["text"].to(device)
    z = start_on_image(gen, tensors["z"].to(device), text)
    if algo == "lift":
        return lift_step_loss(gen, engine, z, text, tensors, generator)
    t = sample_t(z.shape[0], generator, gen.shift, t_range=gen_t_range(gen))
    eps = torch.randn(z.shape, generator=generator).to(device)
    xt, v = noised(z, eps, t.to(device))
    err = flow_error(gen.velocity(xt, t, text, model=engine), v)
    if algo == "rwr":
        rewards = tensors["reward"].to(device)
        mask = tensors.get("is_real")
        real = err[mask.to(device)] if mask is not None and bool(mask.any()) else None
        return rwr_loss(err, rewards, t_cfg.tau, real, t_cfg.lambda_real), {"mean_reward": float(rewards.mean())}
    return sft_loss(err), {}


def lift_step_loss(gen, engine, z, text, tensors: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """LiFT's weighted loss (SPEC §8) in the family's own parameterisation: a v-prediction family (CogVideoX)
    draws integer timesteps τ ~ U{0..N−1}, ᾱ = ᾱ(τ), and takes mean_i w_i·mean((x̂0 − x0)²)/(1 − ᾱ); a flow family
    (Wan) draws t as for the other algorithms and takes mean_i w_i·e_i."""
    from raypipe.flow.losses import (
        flow_error,
        gen_t_range,
        lift_flow_loss,
        lift_v_loss,
        noised,
        sample_t,
        v_prediction_noised,
        x0_from_v,
    )

    device = gen.device
    weight = tensors["weight"].to(device)
    if getattr(gen, "prediction", "flow") == "v":
        tau = torch.randint(0, gen.num_train_timesteps, (z.shape[0],), generator=generator)
        eps = torch.randn(z.shape, generator=generator).to(device)
        alpha_bar = gen.alphas_cumprod[tau].to(device)
        x_t, _ = v_prediction_noised(z, eps, alpha_bar)
        x0_hat = x0_from_v(x_t, gen.predict_v(x_t, tau.float(), text, model=engine), alpha_bar)
        loss = lift_v_loss(x0_hat, z, alpha_bar, weight)
    else:
        t = sample_t(z.shape[0], generator, gen.shift, t_range=gen_t_range(gen))
        eps = torch.randn(z.shape, generator=generator).to(device)
        xt, v = noised(z, eps, t.to(device))
        loss = lift_flow_loss(flow_error(gen.velocity(xt, t, text, model=engine), v), weight)
    stats = {"mean_weight": float(weight.mean())}
    real = tensors.get("is_real")
    if real is not None:
        stats["real_share"] = float(real.float().mean())
    return loss, stats
