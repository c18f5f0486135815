"""The released VideoReward's folder layout (KwaiVGI/VideoAlign), read and written by our own model class.

    model = VideoReward.from_pretrained("VideoReward/", base="/models/Qwen2-VL-2B-Instruct")   # detected here
    export(model, "exported/", base="/models/Qwen2-VL-2B-Instruct")   # the official inference.py loads it

Layout: `model_config.json` (`data_config`, `training_args`, `model_config`, `peft_lora_config`, `inference_config`)
and `checkpoint-<step>/` (the highest step is used) with either `model.pth` (the whole state dict, PEFT-wrapped when
LoRA was on) or `adapter_model.safetensors` + `non_lora_state_dict.pth` (LoRA and trained non-LoRA weights over the
base model). Keys use transformers 4.45's Qwen2-VL names (`visual.*`, `model.*` = the language model) under PEFT's
`base_model.model.` prefix; transformers 5 names them `model.visual.*` and `model.language_model.*`. LoRA is merged
into the base weights on load (W + scale·B·A), which is what the adapters compute in eval mode.

Conventions of the released model, kept as options of our model and processor: the official instruction text
("detailed_special", read from the user's copy of `prompt_template.py`: we do not ship it), the base model's chat
template, plain 1-D positions, the three reward tokens VQ, MQ, TA, qwen-vl-utils 0.0.8 frame sampling
(`SamplingConfig(convention="qwen")`, video min_pixels 128·28·28), norm stats from `inference_config`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import pickle
import re
from pathlib import Path

import torch

from raypipe.config import ConfigError, SamplingConfig
from raypipe.video.sampling import QWEN_MAX_FRAMES as FPS_MAX_FRAMES
from raypipe.video.sampling import QWEN_VIDEO_MIN_PIXELS as VIDEO_MIN_PIXELS

TEMPLATE_ENV = "RAYPIPE_VIDEOALIGN_TEMPLATE"
TEMPLATE_CONSTANT = "DETAILED_PROMPT_WITH_SPECIAL_TOKEN"  # the "detailed_special" text in prompt_template.py
DIMENSIONS = ["VQ", "MQ", "TA"]  # the official model's three reward tokens, in this order
CONFIG_FILE = "model_config.json"


# --- the instruction text (read from the user's copy) --------------------------------------------------------
def read_template(path: str | os.PathLike | None = None) -> str:
    """The "detailed_special" instruction text: from `path` or $RAYPIPE_VIDEOALIGN_TEMPLATE, either the official
    `prompt_template.py` (its `DETAILED_PROMPT_WITH_SPECIAL_TOKEN` string, read with `ast`, never executed) or a
    plain text file holding just the template. It must contain `{text_prompt}` and the three reward tokens."""
    path = path or os.environ.get(TEMPLATE_ENV)
    if not path:
        raise ConfigError(
            f"the videoalign template needs the official instruction text: give template_file=PATH (or set "
            f"{TEMPLATE_ENV}) to your copy of prompt_template.py from github.com/KwaiVGI/VideoAlign"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"template file {path} not found")
    source = path.read_text()
    text = _python_constant(source, TEMPLATE_CONSTANT) if path.suffix == ".py" else source
    if text is None:
        raise ConfigError(f"{path}: no string constant {TEMPLATE_CONSTANT} (is it VideoAlign's prompt_template.py?)")
    missing = [t for t in ["{text_prompt}", *(f"<|{d}_reward|>" for d in DIMENSIONS)] if t not in text]
    if missing:
        raise ConfigError(f"{path}: the template lacks {missing}")
    order = [text.index(f"<|{d}_reward|>") for d in DIMENSIONS]
    if order != sorted(order):  # the official model reads its scores in sequence order as VQ, MQ, TA
        raise ConfigError(f"{path}: the reward tokens must appear in the order {DIMENSIONS}")
    try:
        text.format(text_prompt="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{path}: not a format string with only {{text_prompt}}: {e!r}") from None
    return text


def template_path(path: str | os.PathLike | None, check: bool) -> str | None:
    """`path`, else $RAYPIPE_VIDEOALIGN_TEMPLATE, as an absolute path (None when neither), so every worker reads the
    same file; with `check` it is read now (`read_template`), failing in the driver with one line."""
    path = path or os.environ.get(TEMPLATE_ENV) or None
    if check:
        read_template(path)
    return str(Path(path).resolve()) if path else None


def _python_constant(source: str, name: str) -> str | None:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return None


# --- the folder and its configs -------------------------------------------------------------------------------
def is_videoalign(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and any(path.glob("checkpoint-*"))


def read_config(path: str | os.PathLike) -> dict:
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{Path(path) / CONFIG_FILE}: not JSON ({e})") from None
    for key in ("data_config", "model_config", "peft_lora_config"):
        if not isinstance(config.get(key), dict):
            raise ConfigError(f"{Path(path) / CONFIG_FILE} has no {key!r} section")
    return config


def latest_checkpoint(path: str | os.PathLike) -> Path:
    """`checkpoint-<step>` with the highest step, as the official loader picks it."""
    steps = [(int(p.name.split("-")[-1]), p) for p in Path(path).glob("checkpoint-*") if p.name[11:].isdigit()]
    if not steps:
        raise FileNotFoundError(f"{path}: no checkpoint-<step> folder")
    return max(steps)[1]


def norm_stats(path) -> dict | None:
    """`inference_config` {VQ_mean, VQ_std, ...} as our norm stats; None when the folder has none."""
    inference = read_config(path).get("inference_config")
    if not inference:
        return None
    return {k: {d: inference[f"{d}_{k}"] for d in DIMENSIONS} for k in ("mean", "std")}


def sampling_defaults(fps: float = 2.0, max_pixels: int = 448 * 448) -> SamplingConfig:
    """qwen-vl-utils 0.0.8's video sampling as the released model used it (min 4 frames, at most 768)."""
    qwen = {"min_frames": 4, "max_frames": FPS_MAX_FRAMES, "min_pixels": VIDEO_MIN_PIXELS, "convention": "qwen"}
    return SamplingConfig(fps=fps, max_pixels=max_pixels, **qwen)


def sampling(path) -> SamplingConfig:
    """How the released model sees a video: its data_config fps and pixel budget, qwen-vl-utils conventions."""
    data = read_config(path)["data_config"]
    if data.get("sample_type", "uniform") != "uniform":
        raise ConfigError(f"{path}: data_config.sample_type={data['sample_type']!r}; only 'uniform' is supported")
    cfg = sampling_defaults(float(data.get("fps") or 2.0), int(data.get("max_frame_pixels") or 240 * 320))
    if data.get("num_frames"):  # fixed-count mode: that many frames (even), fewer only if the clip is shorter
        n = 2 * round(float(data["num_frames"]) / 2)
        cfg.min_frames = cfg.max_frames = max(2, n)
    return cfg


# --- loading -------------------------------------------------------------------------------------------------
def torch_load(path: Path) -> dict:
    """A state dict, refusing pickles that need code to load (`weights_only=True`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"{path}: refusing to load: the file needs code to unpickle (weights_only=True failed: "
            f"{str(e).splitlines()[0]}). Re-save it as a plain state dict of tensors."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return state


def read_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    full = checkpoint / "model.pth"
    if full.exists():
        return torch_load(full)
    adapter, rest = checkpoint / "adapter_model.safetensors", checkpoint / "non_lora_state_dict.pth"
    if not adapter.exists() or not rest.exists():
        raise FileNotFoundError(f"{checkpoint}: neither model.pth nor adapter_model.safetensors + non_lora_state_dict")
    from safetensors.torch import load_file

    return {**torch_load(rest), **load_file(str(adapter))}


_LORA = re.compile(r"^(.*)\.lora_(A|B|embedding_A|embedding_B)(?:\.default)?(?:\.weight)?$")


def current_name(key: str) -> str:
    """A transformers 4.45 Qwen2-VL key (PEFT prefix and wrappers removed) in transformers 5's naming."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key[len("model.") :]
    return key


def released_name(key: str) -> str:
    """The inverse of `current_name`."""
    if key.startswith("model.visual."):
        return key[len("model.") :]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key


def split_state(state: dict) -> tuple[dict, dict]:
    """(plain weights, {module: {A|B|embedding_A|embedding_B: tensor}}) in transformers 5 names."""
    plain, lora = {}, {}
    for key, value in state.items():
        key = key.removeprefix("base_model.model.")
        match = _LORA.match(key)
        if match:
            lora.setdefault(current_name(match[1]), {})[match[2]] = value
            continue
        if ".original_module." in key:
            continue
        key = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        plain[current_name(key)] = value
    return plain, lora


def merge_lora(plain: dict, lora: dict, base: dict, scale: float) -> None:
    """W + scale·B·A for every adapted module (W from the checkpoint, else the base model), in float32."""
    for module, parts in lora.items():
        key = f"{module}.weight"
        weight = plain.get(key, base.get(key))
        if weight is None:
            raise ConfigError(f"LoRA for {module} but no such weight in the checkpoint or the base model")
        if "A" in parts:
            delta = parts["B"].float() @ parts["A"].float()
        else:
            delta = (parts["embedding_B"].float() @ parts["embedding_A"].float()).T
        dtype = base[key].dtype if key in base else weight.dtype  # the model's dtype: no bf16 detour on CPU
        plain[key] = (weight.float() + scale * delta).to(dtype)


def lora_scale(peft: dict) -> float:
    r, alpha = int(peft.get("lora_r", 16)), float(peft.get("lora_alpha", 32))
    return alpha / math.sqrt(r) if peft.get("use_rslora") else alpha / r


def reward_config(config: dict, base: str, dtype: str):
    from raypipe.reward.model import LoraSettings, RewardModelConfig

    model_cfg, data_cfg, peft = config["model_config"], config["data_config"], config["peft_lora_config"]
    if not model_cfg.get("use_special_tokens") or data_cfg.get("prompt_template_type") != "detailed_special":
        raise ConfigError(
            "only special-token checkpoints with prompt_template_type=detailed_special (the released VideoReward) "
            f"are supported; this one has use_special_tokens={model_cfg.get('use_special_tokens')}, "
            f"prompt_template_type={data_cfg.get('prompt_template_type')!r}"
        )
    output_dim = int(model_cfg.get("output_dim", 1))
    if output_dim not in (1, len(DIMENSIONS)):
        raise ConfigError(f"output_dim {output_dim} is neither 1 (shared head) nor {len(DIMENSIONS)} (one per token)")
    lora = LoraSettings(r=int(peft.get("lora_r", 16)), alpha=int(peft.get("lora_alpha", 32)), dropout=0.0)
    return RewardModelConfig(
        name_or_path=base,
        dimensions=list(DIMENSIONS),
        context_agnostic=["VQ", "MQ"],
        lora=lora,
        dtype=dtype,
        template="videoalign",
        positions="1d",
        head_per_dimension=output_dim == len(DIMENSIONS),
    )


def resolve_base(config: dict, base: str | None) -> str:
    base = base or config["model_config"].get("model_name_or_path")
    if not base or not Path(base).exists():
        raise FileNotFoundError(
            f"base model {base!r} not found: give base=PATH to a local copy of the checkpoint's base "
            f"(e.g. Qwen/Qwen2-VL-2B-Instruct); nothing is downloaded at run time"
        )
    return str(base)


def ensure_chat_template(tokenizer, base: str) -> None:
    """The base model's chat template on its tokenizer: from tokenizer_config.json, else the processor's
    `chat_template.json` / `chat_template.jinja` beside it (Qwen2-VL ships the template in both places)."""
    folder = Path(base)  # the official renders with the processor's template: prefer its files
    if (folder / "chat_template.json").is_file():
        tokenizer.chat_template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    elif (folder / "chat_template.jinja").is_file():
        tokenizer.chat_template = (folder / "chat_template.jinja").read_text()
    elif not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"base model {base} has no chat template (tokenizer_config.json / chat_template.json)")


def load(cls, path, dtype=None, device="cpu", base=None, template_file=None):
    """A VideoReward (our class) holding the released checkpoint's weights and conventions."""
    from raypipe.reward.backbone import load_backbone
    from raypipe.reward.model import make_processor

    path = Path(path)
    config = read_config(path)
    dtype = dtype or ("float32" if str(device) == "cpu" else config["model_config"].get("torch_dtype") or "bfloat16")
    cfg = reward_config(config, resolve_base(config, base), dtype)
    backbone, tokenizer = load_backbone(cfg.name_or_path, dtype)
    processor = make_processor(tokenizer, cfg, template_file)  # adds the three tokens to the base tokenizer
    plain, lora = split_state(read_state(latest_checkpoint(path)))
    rows = plain.get("model.language_model.embed_tokens.weight")
    if rows is None:  # the reward tokens' trained rows live there
        raise ConfigError(f"{path}: the checkpoint has no embed_tokens weight (the reward tokens' rows)")
    if rows.shape[0] < len(tokenizer):
        raise ConfigError(f"{path}: embedding has {rows.shape[0]} rows, fewer than the tokenizer's {len(tokenizer)}")
    backbone.resize_token_embeddings(rows.shape[0], mean_resizing=False)  # every row is loaded just below
    base_state = backbone.state_dict()
    merge_lora(plain, lora, {**base_state, **{k: v for k, v in plain.items() if k not in base_state}},
               lora_scale(config["peft_lora_config"]))  # fmt: skip
    head = plain.pop("rm_head.weight", None)  # after the merge: LoRA may adapt the head too
    if head is None:
        raise ConfigError(f"{path}: the checkpoint has no rm_head.weight")
    unexpected = sorted(set(plain) - set(base_state))
    if unexpected:
        raise ConfigError(f"{path}: weights with no place in a Qwen2-VL model: {unexpected[:5]}")
    backbone.load_state_dict({k: v.to(base_state[k].dtype) for k, v in plain.items()}, strict=False)
    model = cls(backbone, processor, cfg)
    embed = backbone.get_input_embeddings().weight
    with torch.no_grad():
        model.head.weight.copy_(head.to(model.head.weight.dtype))
        ids = [processor.reward_ids[d] for d in cfg.dimensions]
        model.reward_embeds.copy_(embed[ids].to(model.reward_embeds.dtype))
    model.norm_stats = norm_stats(path)
    return model.to(device).eval()


# --- writing the released layout ---------------------------------------------------------------------------
def export(model, out: str | os.PathLike, base: str, sampling_cfg: SamplingConfig, step: int = 0) -> Path:
    """Write `model` (a VideoReward with the three VQ/MQ/TA tokens) so the official inference.py loads it: a full
    `model.pth` in transformers 4.45 names (no LoRA: ours is merged), the tokenizer, `model_config.json`."""
    if list(model.dimensions) != DIMENSIONS or model.reward_embeds is None:
        raise ConfigError(f"export needs the special-token head with dimensions {DIMENSIONS}; got {model.dimensions}")
    out = Path(out)
    checkpoint = out / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    torch.save(released_state(model), checkpoint / "model.pth")
    model.processor.tokenizer.save_pretrained(checkpoint / "tokenizer")
    (out / CONFIG_FILE).write_text(json.dumps(released_config(model, base, sampling_cfg), indent=4))
    return out


def released_state(model) -> dict[str, torch.Tensor]:
    backbone = model.backbone
    if hasattr(backbone, "merge_and_unload"):
        import copy

        backbone = copy.deepcopy(backbone).merge_and_unload()
    state = {released_name(k): v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    n = len(model.processor.tokenizer)
    embed = state["model.embed_tokens.weight"][:n].clone()
    ids = [model.processor.reward_ids[d] for d in DIMENSIONS]
    embed[ids] = model.reward_embeds.detach().cpu().to(embed.dtype)
    state["model.embed_tokens.weight"] = embed
    out_embed, in_embed = backbone.get_output_embeddings(), backbone.get_input_embeddings()
    tied = out_embed is not None and out_embed.weight.data_ptr() == in_embed.weight.data_ptr()
    # tied (Qwen2-VL-2B): the official load writes lm_head into the same table after embed_tokens
    state["lm_head.weight"] = embed if tied else state["lm_head.weight"][:n].clone()
    state["rm_head.weight"] = model.head.weight.detach().cpu().clone()
    return state


def released_config(model, base: str, sampling_cfg: SamplingConfig) -> dict:
    stats = getattr(model, "norm_stats", None) or {}
    inference = {f"{d}_{k}": stats[k][d] for d in DIMENSIONS for k in ("mean", "std")} if stats else {}
    fixed = sampling_cfg.min_frames == sampling_cfg.max_frames  # count mode (sampling() makes it from num_frames)
    return {
        "data_config": {
            "meta_data": "",
            "data_dir": "",
            "meta_data_test": None,
            "max_frame_pixels": int(sampling_cfg.max_pixels),
            "num_frames": sampling_cfg.max_frames if fixed else None,
            "fps": float(sampling_cfg.fps),
            "p_shuffle_frames": 0.0,
            "p_color_jitter": 0.0,
            "eval_dim": list(DIMENSIONS),
            "prompt_template_type": "detailed_special",
            "add_noise": False,
            "sample_type": "uniform",
            "use_tied_data": True,
        },
        "training_args": {
            "exported_by": "raypipe export-reward",
            "conventions": {"template": model.cfg.template, "positions": model.cfg.positions},
            "sampling": dataclasses.asdict(sampling_cfg),
        },
        "model_config": {
            "model_name_or_path": str(base),
            "output_dim": len(DIMENSIONS) if model.cfg.head_per_dimension else 1,
            "use_special_tokens": True,
            "torch_dtype": model.cfg.dtype,
            "reward_token": "special",
            "loss_type": "btt",
        },
        "peft_lora_config": {"lora_enable": False, "vision_lora": False},
        **({"inference_config": inference} if stats else {}),
    }


def convention_mismatches(model, sampling_cfg: SamplingConfig) -> list[str]:
    """Where a raypipe checkpoint's inputs differ from what the official inference.py will feed it."""
    notes = []
    if model.cfg.template != "videoalign":
        notes.append(f"template {model.cfg.template!r} (official: the detailed_special text in the chat template)")
    if model.cfg.positions != "1d":
        notes.append(f"positions {model.cfg.positions!r} (official: 1-D)")
    s = sampling_cfg
    if s.convention != "qwen" or s.min_pixels != VIDEO_MIN_PIXELS or s.all_frames:
        notes.append("frame sampling (official: qwen-vl-utils 0.0.8, min_pixels 128*28*28)")
    if s.min_frames != s.max_frames and (s.min_frames != 4 or s.max_frames != FPS_MAX_FRAMES):
        notes.append(f"frame count limits {s.min_frames}..{s.max_frames} (official: 4..{FPS_MAX_FRAMES})")
    return notes
