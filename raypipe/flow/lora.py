"""LoRA on the generator's transformer (peft through diffusers' adapter API), the reference model without a copy,
and adapters saved in the format the family's pipeline (`WanPipeline` / `CogVideoXPipeline`) `load_lora_weights` reads.

    add_lora(gen.transformer, r=64, alpha=128, targets=gen.lora_targets)   # only adapter weights train
    with reference(gen.transformer):                                        # adapters off, no_grad: the base model
        v_ref = gen.velocity(z_t, t, text)
    save_lora(gen, "out/lora")   ->  pipe.load_lora_weights("out/lora")
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

ADAPTER = "raypipe"


def add_lora(
    transformer, r: int = 64, alpha: int = 128, dropout: float = 0.0, targets=("to_q", "to_k", "to_v", "to_out.0")
) -> None:
    """Attach a LoRA adapter (B = 0 at init, so the policy starts equal to the reference) and freeze the rest."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), init_lora_weights=True),
        adapter_name=ADAPTER,
    )
    for name, p in transformer.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_parameters(transformer) -> list[torch.nn.Parameter]:
    return [p for n, p in transformer.named_parameters() if "lora_" in n]


@contextlib.contextmanager
def reference(transformer):
    """The reference model of Flow-DPO: the same network with its adapters disabled, under no_grad."""
    transformer.disable_adapters()
    try:
        with torch.no_grad():
            yield transformer
    finally:
        transformer.enable_adapters()


def save_lora(family, path: str | os.PathLike) -> Path:
    """Adapter weights as `pytorch_lora_weights.safetensors`, loadable with the family pipeline's
    `load_lora_weights` (written by that pipeline class's own `save_lora_weights`)."""
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(family.transformer, adapter_name=ADAPTER)
    config = family.transformer.peft_config[ADAPTER].to_dict()  # carries lora_alpha: the scale r/alpha survives
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    type(family.pipeline).save_lora_weights(
        str(path), transformer_lora_layers=state, safe_serialization=True, transformer_lora_adapter_metadata=config
    )
    return path
