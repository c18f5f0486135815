"""The latent, noise-aware reward model of Flow-NRG (SPEC §6.1): r_φ(x_t, t, c) ∈ R^D on the generator's latents.

    lr = LatentReward.for_family(gen, dims=("VQ", "MQ", "TA"), k_blocks=2)   # gen: any loaded generator family
    r = lr(x_t, t, text)                      # [B, D]; x_t normalised latents, t in [0, 1], text: the prompt tensor
    lr.save_pretrained(dir); LatentReward.from_pretrained(dir, generator=gen)

The trunk is the generator's own transformer class with its first K blocks (`num_layers = K`; HunyuanVideo: its first
K double-stream blocks and no single-stream ones), initialised from the generator's embeddings, time/text
conditioning and those blocks (the same keys, copied); the rest of the generator is not kept (a family-run trunk
keeps a `velocity_view` of its family: no encoders, no VAE, the trunk as its transformer). The tokens out of
block K (the video stream) are mean-pooled, layer-normed, and one linear head per dimension (the rows of one
`nn.Linear(hidden, D)`) gives the rewards. How the trunk is run:
  - Wan2.1/2.2 and LTX-Video: block by block here, standalone (scoring needs no generator); an image-to-video
    prompt (`raypipe.flow.conditioning`: the rows beyond `text_rows`, the generator's prompt rows) conditions the
    trunk as it conditions the generator. Wan2.2 A14B: one trunk per expert, each sample through the expert the
    generator uses at its timestep (t ≥ boundary: the high-noise one), both saved (trunk/, trunk_2/).
  - HunyuanVideo 1.0/1.5, LTX-2, CogVideoX: through the family's own `velocity(x_t, t, text, model=trunk)`, stopped
    after block K by a forward hook that keeps its video tokens; loading one needs the generator family
    (`from_pretrained(..., generator=gen)`; every recipe that scores latents has it loaded).
`trainable` picks what learns: "all" (trunk + heads), "blocks" (the K blocks + heads; embeddings and conditioning
frozen) or "heads".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from raypipe.flow.common import cast_like_pretrained, compute_dtype_device
from raypipe.flow.conditioning import (
    condition_first_frame,
    per_token_times,
    split_conditions,
    split_image,
    wan_inputs,
)

TRAINABLE = ("all", "blocks", "heads")
_CONFIG = "latent_reward.json"

STANDALONE = ("WanTransformer3DModel", "LTXVideoTransformer3DModel")  # run block by block here
VIA_FAMILY = (  # run through their family's velocity, stopped after block K
    "HunyuanVideoTransformer3DModel",
    "HunyuanVideo15Transformer3DModel",
    "LTX2VideoTransformer3DModel",
    "CogVideoXTransformer3DModel",
)
TRUNKS = STANDALONE + VIA_FAMILY


def latent_reward_dimensions(path: str) -> list[str]:
    """The dimensions a latent reward checkpoint scores, read from its config without loading weights."""
    meta = Path(path) / _CONFIG
    if not meta.exists():
        raise FileNotFoundError(f"{path} is not a latent reward (train-latent-reward OUT/final)")
    return list(json.loads(meta.read_text())["dims"])


def _blocks(transformer):
    """A trunk's (or generator transformer's) block list: Wan's `blocks`, the others' `transformer_blocks`
    (HunyuanVideo: the double-stream ones)."""
    blocks = getattr(transformer, "blocks", None)
    return blocks if blocks is not None else transformer.transformer_blocks


def _truncated(transformer, k_blocks: int):
    """The transformer's class with its first `k_blocks` blocks, their weights and every embedding copied."""
    n = len(_blocks(transformer))
    if not 1 <= k_blocks <= n:
        raise ValueError(f"k_blocks must be in [1, {n}] (the generator has {n} blocks), got {k_blocks}")
    config = dict(transformer.config)
    config["num_layers"] = k_blocks
    if "num_single_layers" in config:  # HunyuanVideo: the trunk stops after its double-stream blocks
        config["num_single_layers"] = 0
    trunk = type(transformer).from_config(config)
    source = transformer.state_dict()
    missing, unexpected = trunk.load_state_dict({k: v for k, v in source.items() if k in trunk.state_dict()}, False)
    if missing or unexpected:
        raise RuntimeError(f"could not copy the generator's first {k_blocks} blocks: missing {missing}")
    return cast_like_pretrained(trunk, compute_dtype_device(transformer)[0])


def needs_generator(path: str | os.PathLike) -> bool:
    """Whether a saved latent reward's trunk runs through its generator family (from_pretrained's `generator`)."""
    config = Path(path) / "trunk" / "config.json"
    return config.exists() and json.loads(config.read_text()).get("_class_name") in VIA_FAMILY


class _Pooled(Exception):
    """Raised by the hook after block K: the rest of the family's forward is not needed."""


class LatentReward(nn.Module):
    def __init__(
        self,
        trunk,
        dims: tuple[str, ...],
        trainable: str = "all",
        text_rows: int | None = None,
        geometry: dict | None = None,
        family=None,
    ):
        super().__init__()
        name = type(trunk).__name__
        if name != "WanExperts" and name not in TRUNKS:
            raise ValueError(f"a latent reward trunk is one of {TRUNKS}, got {name}")
        if name in VIA_FAMILY and family is None:
            raise ValueError(
                f"a {name} trunk runs through its generator family's velocity: pass the loaded generator "
                "(LatentReward.from_pretrained(path, generator=load_family(GENERATOR)))"
            )
        if name in VIA_FAMILY:
            if type(family.transformer).__name__ != name:
                raise ValueError(
                    f"this latent reward's trunk is a {name}; the generator given is the {family.name} family"
                )
            family = family.velocity_view(trunk)  # what velocity reads, not the whole generator
        self.family = family if name in VIA_FAMILY else None  # a plain attribute: not saved, not a submodule
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
        config = trunk.config
        hidden = config.num_attention_heads * config.attention_head_dim
        self.norm = nn.LayerNorm(hidden)
        self.heads = nn.Linear(hidden, len(self.dims))
        nn.init.normal_(self.heads.weight, std=hidden**-0.5)
        nn.init.zeros_(self.heads.bias)
        self.set_trainable(trainable)

    def _trunks(self) -> list:
        """The trunk, or A14B's two (high-noise, low-noise)."""
        return [self.trunk.high, self.trunk.low] if type(self.trunk).__name__ == "WanExperts" else [self.trunk]

    @property
    def k_blocks(self) -> int:
        return len(_blocks(self._trunks()[0]))

    def set_trainable(self, trainable: str) -> None:
        self.trainable = trainable
        self.trunk.requires_grad_(trainable == "all")
        if trainable == "blocks":
            for trunk in self._trunks():
                _blocks(trunk).requires_grad_(True)
        self.norm.requires_grad_(True)
        self.heads.requires_grad_(True)

    @classmethod
    def for_family(cls, gen, dims, k_blocks: int = 2, trainable: str = "all") -> LatentReward:
        """The latent reward of a loaded generator family: its transformer's first `k_blocks` blocks (both experts'
        for Wan2.2 A14B) and what the family's prompts and latents need."""
        geometry = None
        if gen.name == "ltx":
            geometry = {"text_dim": gen.text_dim, "frame_rate": gen.frame_rate, "temporal": gen.temporal}
            geometry["spatial"] = gen.spatial
        text_rows = gen.max_text_len if gen.name in ("wan", "ltx") else None
        return cls.from_generator(gen.transformer, dims, k_blocks, trainable, text_rows, geometry, gen)

    @classmethod
    def from_generator(
        cls,
        transformer,
        dims,
        k_blocks: int = 2,
        trainable: str = "all",
        text_rows: int | None = None,
        geometry: dict | None = None,
        family=None,
    ) -> LatentReward:
        """Copy the generator transformer's embedding, conditioning and first `k_blocks` blocks into a trunk
        (`text_rows`: the family's prompt rows, so an image-to-video prompt's image can be told apart; `family`:
        the loaded generator, which Hunyuan/LTX-2/CogVideoX trunks run through)."""
        from raypipe.flow.wan22 import WanExperts

        if type(transformer).__name__ == "WanExperts":
            trunk = WanExperts(
                _truncated(transformer.high, k_blocks), _truncated(transformer.low, k_blocks), transformer.boundary
            )
        elif type(transformer).__name__ in TRUNKS:
            trunk = _truncated(transformer, k_blocks)
        else:
            raise ValueError(f"no latent reward trunk for a {type(transformer).__name__} (known: {TRUNKS})")
        device = compute_dtype_device(transformer)[1]
        return cls(trunk, tuple(dims), trainable, text_rows, geometry, family).to(device)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Pooled [B, hidden] features of the first K blocks (the generator's own conditioning of t and c)."""
        name = type(self.trunk).__name__
        if name == "WanExperts":
            return self._experts_features(x_t, t, text)
        if name == "WanTransformer3DModel":
            return self._wan_features(self.trunk, x_t, t, text)
        if name == "LTXVideoTransformer3DModel":
            return self._ltx_features(x_t, t, text)
        return self._family_features(x_t, t, text)

    def _wan_features(self, tr, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
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

    def _experts_features(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Wan2.2 A14B: each sample through the trunk of the expert its timestep belongs to (WanExperts' rule). When
        training, an expert without samples runs on one and adds 0 x its features: every rank then reduces the same
        gradients (as WanExperts.forward does for the generator)."""
        experts = self.trunk
        high = experts.expert_of(1000.0 * t.float().reshape(-1))
        training = experts.partitioned() or (  # ZeRO-3: every rank gathers both experts' weights
            torch.is_grad_enabled() and any(p.requires_grad for p in experts.parameters())
        )

        def run(expert, rows):
            on = rows.to(x_t.device)
            return self._wan_features(expert, x_t[on], t[rows.to(t.device)], text[rows.to(text.device)])

        return experts.route(high, run, training)

    def _family_features(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Hunyuan/LTX-2/CogVideoX: the family's own velocity with the trunk as its model, stopped by a hook after
        block K, whose video tokens (a block's first output) are pooled (under ZeRO-3 the forward runs to its end:
        DeepSpeed's own hooks after each module re-partition its weights)."""
        trunk, seen = self.trunk, {}
        if self.gradient_checkpointing and not trunk.is_gradient_checkpointing:
            trunk.enable_gradient_checkpointing()
        elif trunk.is_gradient_checkpointing and not self.gradient_checkpointing:
            trunk.disable_gradient_checkpointing()

        partitioned = hasattr(next(trunk.parameters()), "ds_id")  # ZeRO-3 re-partitions in post-forward hooks

        def keep(module, args, output):
            seen["h"] = output[0] if isinstance(output, tuple) else output
            if not partitioned:  # the rest of the forward is not needed
                raise _Pooled

        handle = _blocks(trunk)[-1].register_forward_hook(keep)
        try:
            self.family.velocity(x_t, t, text, model=trunk)
        except _Pooled:
            pass
        finally:
            handle.remove()
        return seen["h"].float().mean(dim=1)

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
        trunks = self._trunks()
        for folder, trunk in zip(("trunk", "trunk_2"), trunks):  # A14B: the low-noise expert's trunk in trunk_2
            trunk.save_pretrained(path / folder)
        experts = {"boundary": self.trunk.boundary} if len(trunks) == 2 else {}
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
                    **experts,
                    **(extra or {}),
                },
                indent=2,
            )
        )
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: str = "float32", device: str = "cpu", generator=None
    ) -> LatentReward:
        """A saved latent reward; `generator` (the loaded family) is needed by Hunyuan/LTX-2/CogVideoX trunks,
        ignored by the others."""
        import diffusers
        from safetensors.torch import load_file

        from raypipe.flow.wan22 import WanExperts

        path = Path(path)
        if not (path / _CONFIG).exists():
            raise FileNotFoundError(
                f"{path} is not a latent reward model (no {_CONFIG}); train one with `raypipe train-latent-reward`"
            )
        meta = json.loads((path / _CONFIG).read_text())
        trunks = []
        for folder in ("trunk", "trunk_2"):
            if not (path / folder).exists():
                continue
            trunk_class = json.loads((path / folder / "config.json").read_text()).get("_class_name")
            if trunk_class not in TRUNKS:
                raise ValueError(f"{path}: unknown latent reward trunk {trunk_class!r} (known: {TRUNKS})")
            trunks.append(getattr(diffusers, trunk_class).from_pretrained(path / folder, dtype=getattr(torch, dtype)))
        trunk = WanExperts(*trunks, boundary=meta["boundary"]) if len(trunks) == 2 else trunks[0]
        model = cls(
            trunk,
            tuple(meta["dims"]),
            meta.get("trainable", "all"),
            meta.get("text_rows"),
            meta.get("geometry"),
            generator,
        )
        state = load_file(str(path / "heads.safetensors"))
        model.norm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("norm.")})
        model.heads.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("heads.")})
        model.meta = meta
        return model.to(device).eval().requires_grad_(False)
