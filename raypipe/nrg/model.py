"""The latent, noise-aware reward model of Flow-NRG (SPEC §6.1): r_φ(x_t, t, c) ∈ R^D on the generator's latents.

    lr = LatentReward.for_family(gen, dims=("VQ", "MQ", "TA"), k_blocks=2)   # gen: a Wan or LTX-Video family
    r = lr(x_t, t, text)                      # [B, D]; x_t normalised latents, t in [0, 1], text [B, L, D_text]
    lr.save_pretrained(dir); LatentReward.from_pretrained(dir)

The trunk is a real `WanTransformer3DModel` (or `LTXVideoTransformer3DModel`) with `num_layers = K`, initialised
from the generator's patch embedding, time/text conditioning and first K blocks (the same keys, copied); the rest of
the generator is not kept. Tokens after block K are mean-pooled, layer-normed, and one linear head per dimension
(the rows of one `nn.Linear(hidden, D)`) gives the rewards. An image-to-video prompt (`raypipe.flow.conditioning`:
the rows beyond `text_rows`, the generator's prompt rows) conditions the trunk as it conditions the generator.
`trainable` picks what learns: "all" (trunk + heads), "blocks" (the K blocks + heads; patch embedding and
conditioning frozen) or "heads".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from raypipe.flow.conditioning import (
    condition_first_frame,
    per_token_times,
    split_conditions,
    split_image,
    wan_inputs,
)
from raypipe.flow.family import cast_like_pretrained, compute_dtype_device

TRAINABLE = ("all", "blocks", "heads")
_CONFIG = "latent_reward.json"


TRUNKS = ("WanTransformer3DModel", "LTXVideoTransformer3DModel")


def _blocks(transformer):
    """A trunk's (or generator transformer's) block list: Wan's `blocks`, LTX's `transformer_blocks`."""
    blocks = getattr(transformer, "blocks", None)
    return blocks if blocks is not None else transformer.transformer_blocks


class LatentReward(nn.Module):
    def __init__(
        self,
        trunk,
        dims: tuple[str, ...],
        trainable: str = "all",
        text_rows: int | None = None,
        geometry: dict | None = None,
    ):
        super().__init__()
        if type(trunk).__name__ not in TRUNKS:
            raise ValueError(f"a latent reward trunk is one of {TRUNKS}, got {type(trunk).__name__}")
        self.text_rows = text_rows  # the generator's prompt rows; more rows carry an image (image-to-video)
        # LTX: what its velocity needs beyond the transformer (text width, frame rate, VAE factors for the RoPE scale)
        self.geometry = dict(geometry or {})
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        if not dims:
            raise ValueError("a latent reward needs at least one dimension")
        self.trunk = trunk
        self.dims = tuple(dims)
        self.trainable = trainable
        self.gradient_checkpointing = False  # recompute each block's activations in backward (GPU memory)
        hidden = trunk.config.num_attention_heads * trunk.config.attention_head_dim
        self.norm = nn.LayerNorm(hidden)
        self.heads = nn.Linear(hidden, len(self.dims))
        nn.init.normal_(self.heads.weight, std=hidden**-0.5)
        nn.init.zeros_(self.heads.bias)
        self.set_trainable(trainable)

    @property
    def k_blocks(self) -> int:
        return len(_blocks(self.trunk))

    def set_trainable(self, trainable: str) -> None:
        self.trainable = trainable
        self.trunk.requires_grad_(trainable == "all")
        if trainable == "blocks":
            _blocks(self.trunk).requires_grad_(True)
        self.norm.requires_grad_(True)
        self.heads.requires_grad_(True)

    @classmethod
    def for_family(cls, gen, dims, k_blocks: int = 2, trainable: str = "all") -> LatentReward:
        """The latent reward of a loaded generator family (Wan2.1/2.2 incl. image-to-video, LTX-Video): its
        transformer's first `k_blocks` blocks and what the family's prompts and latents need."""
        transformer = gen.transformer
        if type(transformer).__name__ == "WanExperts":
            raise ValueError("a latent reward on Wan2.2 A14B's two experts is not supported yet")
        if type(transformer).__name__ not in TRUNKS:
            raise ValueError(f"a latent reward needs a Wan or LTX-Video generator, got the {gen.name} family")
        geometry = None
        if gen.name == "ltx":
            geometry = {"text_dim": gen.text_dim, "frame_rate": gen.frame_rate, "temporal": gen.temporal}
            geometry["spatial"] = gen.spatial
        return cls.from_generator(transformer, dims, k_blocks, trainable, gen.max_text_len, geometry)

    @classmethod
    def from_generator(
        cls,
        transformer,
        dims,
        k_blocks: int = 2,
        trainable: str = "all",
        text_rows: int | None = None,
        geometry: dict | None = None,
    ) -> LatentReward:
        """Copy the generator transformer's embedding, conditioning and first `k_blocks` blocks into a trunk
        (`text_rows`: the family's prompt rows, so an image-to-video prompt's image can be told apart)."""
        n = len(_blocks(transformer))
        if not 1 <= k_blocks <= n:
            raise ValueError(f"k_blocks must be in [1, {n}] (the generator has {n} blocks), got {k_blocks}")
        config = dict(transformer.config)
        config["num_layers"] = k_blocks
        trunk = type(transformer).from_config(config)
        source = transformer.state_dict()
        missing, unexpected = trunk.load_state_dict(
            {k: v for k, v in source.items() if k in trunk.state_dict()}, strict=False
        )
        # Only the output head of the trunk (unused here) may stay at its random initialisation.
        left = [k for k in missing if not k.startswith(("proj_out", "scale_shift_table", "norm_out"))]
        if left or unexpected:
            raise RuntimeError(f"could not copy the generator's first {k_blocks} blocks: missing {left}")
        dtype, device = compute_dtype_device(transformer)
        cast_like_pretrained(trunk, dtype)
        return cls(trunk, tuple(dims), trainable, text_rows, geometry).to(device)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Pooled [B, hidden] features of the first K blocks (the generator's own conditioning of t and c)."""
        if type(self.trunk).__name__ == "LTXVideoTransformer3DModel":
            return self._ltx_features(x_t, t, text)
        tr = self.trunk
        dtype, device = compute_dtype_device(tr)
        image = states = None
        if self.text_rows is not None:
            text, image, states = split_conditions(text, self.text_rows)
        x_t, timestep = wan_inputs(x_t, t, image, tr.config, device)  # as WanFamily.velocity conditions
        x_t, text, seq_len = x_t.to(dtype), text.to(device, dtype), None
        if timestep.dim() == 2:  # per-token timesteps (Wan2.2 TI2V's image frame at 0)
            seq_len, timestep = timestep.shape[1], timestep.flatten()
        rotary = tr.rope(x_t)
        h = tr.patch_embedding(x_t).flatten(2).transpose(1, 2).contiguous()
        states = None if states is None else states.to(device, dtype)
        _, timestep_proj, enc, enc_image = tr.condition_embedder(timestep, text, states, timestep_seq_len=seq_len)
        if enc_image is not None:  # Wan2.1 I2V: the CLIP states go first, as in the transformer's forward
            enc = torch.cat([enc_image, enc], dim=1)
        timestep_proj = timestep_proj.unflatten(1 if seq_len is None else 2, (6, -1))
        for block in tr.blocks:
            h = self._block(block, h, enc, timestep_proj, rotary)
        return h.float().mean(dim=1)

    def _block(self, block, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _ltx_features(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """LTX-Video: latents packed into tokens (frames, rows, columns) and the blocks run as
        LTXVideoTransformer3DModel.forward runs them (the T5 mask as an attention bias, per-token timesteps for
        an image-to-video prompt, as LTXFamily.velocity passes them)."""
        from diffusers import LTXPipeline

        tr, g = self.trunk, self.geometry
        dtype, device = compute_dtype_device(tr)
        image = None
        if self.text_rows is not None:
            text, image = split_image(text, self.text_rows)
        p, pt = int(tr.config.patch_size), int(tr.config.patch_size_t)
        b, _, frames, height, width = x_t.shape
        timestep = (1000.0 * t).to(device, torch.float32)
        if image is not None:
            x_t = condition_first_frame(x_t, image)
            timestep = per_token_times(timestep, frames, (height // p) * (width // p))
        tokens = LTXPipeline._pack_latents(x_t.to(device, dtype), p, pt)
        scale = (g["temporal"] / g["frame_rate"], g["spatial"], g["spatial"])
        rotary = tr.rope(tokens, frames // pt, height // p, width // p, scale, None)
        text = text.to(device)
        bias = ((1 - text[..., g["text_dim"]].round().to(dtype)) * -10000.0).unsqueeze(1)
        h = tr.proj_in(tokens)
        temb, _ = tr.time_embed(timestep.flatten(), batch_size=b, hidden_dtype=h.dtype)
        temb = temb.view(b, -1, temb.size(-1))
        enc = tr.caption_projection(text[..., : g["text_dim"]].to(dtype)).view(b, -1, h.size(-1))
        for block in tr.transformer_blocks:
            h = self._block(block, h, enc, temb, rotary, bias)
        return h.float().mean(dim=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[B, D] rewards of noisy latents x_t at times t (t = 0: clean) for prompt embeddings `text`."""
        h = self.features(x_t, t, text)
        # DeepSpeed's bf16 mode casts the whole module, norm and heads included: follow their dtype
        return self.heads(self.norm(h.to(self.norm.weight.dtype))).float()

    # --- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.trunk.save_pretrained(path / "trunk")
        save_file(
            {f"norm.{k}": v.contiguous() for k, v in self.norm.state_dict().items()}
            | {f"heads.{k}": v.contiguous() for k, v in self.heads.state_dict().items()},
            str(path / "heads.safetensors"),
        )
        (path / _CONFIG).write_text(
            json.dumps(
                {
                    "dims": list(self.dims),
                    "k_blocks": self.k_blocks,
                    "trainable": self.trainable,
                    "text_rows": self.text_rows,
                    "geometry": self.geometry,
                    **(extra or {}),
                },
                indent=2,
            )
        )
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str = "float32", device: str = "cpu") -> LatentReward:
        import diffusers
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / _CONFIG).exists():
            raise FileNotFoundError(
                f"{path} is not a latent reward model (no {_CONFIG}); train one with `raypipe train-latent-reward`"
            )
        meta = json.loads((path / _CONFIG).read_text())
        trunk_class = json.loads((path / "trunk" / "config.json").read_text()).get("_class_name")
        if trunk_class not in TRUNKS:
            raise ValueError(f"{path}: unknown latent reward trunk {trunk_class!r} (known: {TRUNKS})")
        trunk = getattr(diffusers, trunk_class).from_pretrained(path / "trunk", dtype=getattr(torch, dtype))
        model = cls(
            trunk, tuple(meta["dims"]), meta.get("trainable", "all"), meta.get("text_rows"), meta.get("geometry")
        )
        state = load_file(str(path / "heads.safetensors"))
        model.norm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("norm.")})
        model.heads.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("heads.")})
        model.meta = meta
        return model.to(device).eval().requires_grad_(False)
