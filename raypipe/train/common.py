"""Pieces every Ray Train worker loop shares: the DeepSpeed config and rank agreement."""
from __future__ import annotations


def deepspeed_config(t, total_steps: int, bf16: bool, micro_batch: int) -> dict:
    """DeepSpeed config from a train settings section (zero_stage, lr, weight_decay, warmup_ratio, min_lr_ratio,
    grad_clip): AdamW (torch implementation) + warm-up/cosine schedule."""
    warmup = max(1, int(t.warmup_ratio * total_steps))
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": bf16},
        # torch_adam: a compiled FusedAdam is the default for "AdamW" and needs a CUDA toolchain.
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                  "weight_decay": t.weight_decay, "torch_adam": True}},
        "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": max(total_steps, warmup + 1),
                                                          "warmup_num_steps": warmup,
                                                          "cos_min_ratio": t.min_lr_ratio}},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def all_ranks_true(flag: bool) -> bool:
    """True on every rank iff `flag` is true on every rank (one all-reduce), so all ranks take the same branch."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([0 if flag else 1])
    dist.all_reduce(t)
    return int(t.item()) == 0
