"""The released VideoReward layout: a tiny Qwen2-VL written the way VideoAlign's training code writes it (4.45 key
names, PEFT prefixes and LoRA, model.pth or adapter + non-LoRA files, model_config.json, an inference_config), loaded
by our code and checked against a forward pass assembled here by hand from the same tensors; export round trip;
the weights_only refusal; the template reader."""

import json
import re

import numpy as np
import pytest
import torch

from raypipe.config import ConfigError, SamplingConfig
from raypipe.reward import videoalign
from raypipe.reward.backbone import build_tiny_tokenizer, make_tiny_backbone
from raypipe.reward.model import RewardModelConfig, VideoReward
from raypipe.reward.processor import video_patches
from raypipe.reward.scoring import checkpoint_dimensions, read_norm_stats, resolve_sampling

# Our own template text with the official one's structure (VQ and MQ tokens before the prompt, TA after it).
TEMPLATE = (
    "rate the video quality : <|VQ_reward|> . rate the motion quality : <|MQ_reward|> . "
    "the prompt : {text_prompt} . rate the text alignment : <|TA_reward|> ."
)
# A chat template of our own, shaped like Qwen2-VL's: a default system turn, the video placeholder, the text.
SYSTEM = "rate the video ."
CHAT = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STATS = {"VQ_mean": 0.1, "VQ_std": 2.0, "MQ_mean": -0.3, "MQ_std": 0.5, "TA_mean": 0.0, "TA_std": 1.5}
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R, ALPHA = 4, 8
DIMS3 = ["VQ", "MQ", "TA"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = make_tiny_backbone(tmp_path_factory.mktemp("base") / "qwen2vl")
    tok = build_tiny_tokenizer()
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "prompt_template.py"
    path.write_text(f'OTHER = "x"\n{videoalign.TEMPLATE_CONSTANT} = """\n{TEMPLATE}\n"""\n')
    return path


def official_tensors(base, output_dim: int, seed: int = 0):
    """What VideoAlign's training would leave: every weight changed, the three token rows, LoRA on the language
    model's linear layers, the rm_head; in transformers 5 names (renamed below), plus the LoRA factors."""
    from transformers import Qwen2VLForConditionalGeneration

    g = torch.Generator().manual_seed(seed)
    model = Qwen2VLForConditionalGeneration.from_pretrained(base)
    n_tokens = len(build_tiny_tokenizer()) + 3
    model.resize_token_embeddings(n_tokens)
    state = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]  # tied, as in Qwen2-VL-2B
    lora = {}
    for key, w in state.items():
        if key.startswith("model.language_model.") and key.endswith(".weight") and key.split(".")[-2] in LINEAR:
            a = 0.1 * torch.randn(R, w.shape[1], generator=g)
            b = 0.1 * torch.randn(w.shape[0], R, generator=g)
            lora[key[: -len(".weight")]] = (a, b)
    hidden = state["model.language_model.embed_tokens.weight"].shape[1]
    head = 0.3 * torch.randn(output_dim, hidden, generator=g)
    return state, lora, head


def released_key(key: str, lora_modules) -> str:
    """transformers 5 name -> the 4.45 name under PEFT's prefix (base_layer for adapted modules)."""
    old = re.sub(r"^model\.visual\.", "visual.", key)
    old = re.sub(r"^model\.language_model\.", "model.", old)
    module, leaf = key.rsplit(".", 1)
    if module in lora_modules:
        old = old.rsplit(".", 1)[0] + f".base_layer.{leaf}"
    return "base_model.model." + old


def write_released(folder, base, output_dim=1, layout="full", seed=0):
    state, lora, head = official_tensors(base, output_dim, seed)
    out = {released_key(k, lora): v for k, v in state.items()}
    adapters = {}
    for module, (a, b) in lora.items():
        old = "base_model.model." + re.sub(r"^model\.language_model\.", "model.", module)
        adapters[f"{old}.lora_A.weight"], adapters[f"{old}.lora_B.weight"] = a, b
    out["base_model.model.rm_head.weight"] = head
    stale = folder / "checkpoint-5"  # a lower step: must not be the one loaded
    stale.mkdir(parents=True)
    torch.save({"garbage": torch.zeros(1)}, stale / "model.pth")
    ckpt = folder / "checkpoint-12"
    ckpt.mkdir()
    if layout == "full":
        out.update({k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                    for k, v in adapters.items()})  # fmt: skip
        torch.save(out, ckpt / "model.pth")
    else:  # adapter files + the trained non-LoRA weights; the base supplies the rest
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in adapters.items()}, str(ckpt / "adapter_model.safetensors"))
        trained = {k: v for k, v in out.items() if "base_layer" not in k}
        torch.save(trained, ckpt / "non_lora_state_dict.pth")
        for module in lora:  # the adapted layers' own weights and biases stay the base's in this layout
            for leaf in ("weight", "bias"):
                if f"{module}.{leaf}" in state:
                    state[f"{module}.{leaf}"] = None
    config = {
        "data_config": {"meta_data": "x.csv", "data_dir": "/x", "fps": 2.0, "max_frame_pixels": 112 * 112,
                        "num_frames": None, "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special",
                        "sample_type": "uniform"},
        "training_args": {"output_dir": str(folder)},
        "model_config": {"model_name_or_path": str(base), "output_dim": output_dim, "use_special_tokens": True,
                         "reward_token": "special", "torch_dtype": "bfloat16"},
        "peft_lora_config": {"lora_enable": True, "lora_r": R, "lora_alpha": ALPHA, "lora_dropout": 0.05,
                             "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"]},
        "inference_config": STATS,
    }  # fmt: skip
    (folder / "model_config.json").write_text(json.dumps(config))
    return state, lora, head


def by_hand(base, state, lora, head, frames_list, prompts):
    """The released model's forward, assembled from the tensors: LoRA merged by hand, the chat text written out,
    1-D positions, rm_head at the reward tokens (row d at token d for output_dim 3)."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_special_tokens({"additional_special_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]})
    model.resize_token_embeddings(len(tok))
    current = model.state_dict()
    weights = {k: (current[k] if v is None else v) for k, v in state.items()}
    for module, (a, b) in lora.items():
        weights[module + ".weight"] = weights[module + ".weight"] + (ALPHA / R) * b @ a
    model.load_state_dict(weights)
    model.eval()
    out = []
    for frames, prompt in zip(frames_list, prompts):
        text = TEMPLATE.replace("{text_prompt}", prompt)
        chat = (
            f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
            f"{text}<|im_end|>\n<|im_start|>assistant\n"
        )
        ids = tok(chat)["input_ids"]
        patches, grid = video_patches(frames)
        n_video = grid[0] * grid[1] * grid[2] // 4
        k = ids.index(tok.convert_tokens_to_ids("<|video_pad|>"))
        ids = torch.tensor(ids[:k] + ids[k : k + 1] * n_video + ids[k + 1 :])
        with torch.no_grad():
            embeds = model.model.language_model.embed_tokens(ids)[None]
            video = model.model.visual(patches, grid_thw=torch.tensor([grid])).pooler_output
            embeds[0, k : k + n_video] = video
            hidden = model.model.language_model(inputs_embeds=embeds, position_ids=torch.arange(len(ids))[None])
            hidden = hidden.last_hidden_state[0]
        rows = [int((ids == tok.convert_tokens_to_ids(f"<|{d}_reward|>")).nonzero()) for d in ("VQ", "MQ", "TA")]
        values = hidden[rows] @ head.T  # [3, output_dim]
        out.append(values.diagonal() if head.shape[0] == 3 else values[:, 0])
    return torch.stack(out)


def clips():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8), rng.integers(0, 255, (2, 28, 56, 3), dtype=np.uint8)]


@pytest.mark.parametrize("output_dim,layout", [(1, "full"), (3, "full"), (1, "adapter")])
def test_released_layout_scores_equal_the_hand_assembled_forward(tmp_path, base, template_file, output_dim, layout):
    state, lora, head = write_released(tmp_path, base, output_dim, layout)
    model = VideoReward.from_pretrained(tmp_path, template_file=str(template_file))
    assert model.cfg.template == "videoalign" and model.cfg.positions == "1d"
    assert model.cfg.head_per_dimension == (output_dim == 3)
    frames, prompts = clips(), ["a red circle moving left", "a blue square"]
    ours = model.score(frames, prompts)  # one padded batch of two lengths
    expected = by_hand(base, state, lora, head, frames, prompts)
    torch.testing.assert_close(ours, expected.float(), atol=1e-5, rtol=1e-5)
    one = model.score(frames[1:], prompts[1:])  # alone: padding changes nothing
    torch.testing.assert_close(one, expected[1:].float(), atol=1e-5, rtol=1e-5)


def test_side_files_of_the_released_layout(tmp_path, base):
    write_released(tmp_path, base)
    assert checkpoint_dimensions(str(tmp_path)) == ["VQ", "MQ", "TA"]
    stats = read_norm_stats(str(tmp_path), ["VQ", "MQ", "TA"])
    assert stats == {"mean": {"VQ": 0.1, "MQ": -0.3, "TA": 0.0}, "std": {"VQ": 2.0, "MQ": 0.5, "TA": 1.5}}
    sampling, source = resolve_sampling(str(tmp_path), None)
    assert source.endswith("model_config.json")
    assert (sampling.convention, sampling.fps, sampling.max_pixels) == ("qwen", 2.0, 112 * 112)
    assert (sampling.min_pixels, sampling.min_frames, sampling.max_frames) == (128 * 28 * 28, 4, 768)
    config = json.loads((tmp_path / "model_config.json").read_text())
    config["data_config"]["sample_type"] = "multi_pts"  # the official code's other mode: refused, not ignored
    (tmp_path / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="sample_type"):
        resolve_sampling(str(tmp_path), None)


def test_export_round_trip_gives_identical_scores(tmp_path, base, template_file):
    cfg = RewardModelConfig(name_or_path=str(base), template="videoalign", positions="1d", head_per_dimension=True)
    torch.manual_seed(3)
    model = VideoReward.build(cfg, template_file=str(template_file))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.norm_stats = {"mean": {"VQ": 1.0, "MQ": 2.0, "TA": 3.0}, "std": {"VQ": 1.0, "MQ": 0.5, "TA": 2.0}}
    sampling = videoalign.sampling_defaults(fps=2.0, max_pixels=112 * 112)
    out = videoalign.export(model, tmp_path / "exported", base=str(base), sampling_cfg=sampling, step=7)
    state = torch.load(out / "checkpoint-7" / "model.pth", weights_only=True)
    assert "rm_head.weight" in state and "visual.patch_embed.proj.weight" in state
    assert not any(k.startswith(("model.language_model", "model.visual", "base_model")) for k in state)
    config = json.loads((out / "model_config.json").read_text())
    assert config["model_config"]["output_dim"] == 3 and config["inference_config"]["MQ_std"] == 0.5
    loaded = VideoReward.from_pretrained(out, template_file=str(template_file))
    frames, prompts = clips(), ["a red circle moving left", "a blue square"]
    # the same scores up to float32 rounding (the export's weight arithmetic and the CPU's matmul kernels: 2.8e-6
    # was seen on an AVX-512 machine)
    torch.testing.assert_close(loaded.score(frames, prompts), model.score(frames, prompts), atol=1e-5, rtol=1e-5)
    assert loaded.norm_stats == model.norm_stats


class _NeedsCode:
    pass


def test_a_pickle_that_needs_code_is_refused(tmp_path, base, template_file):
    write_released(tmp_path, base)
    torch.save({"w": torch.zeros(1), "obj": _NeedsCode()}, tmp_path / "checkpoint-12" / "model.pth")
    with pytest.raises(ConfigError, match="refusing to load"):
        VideoReward.from_pretrained(tmp_path, template_file=str(template_file))


def test_template_reader(tmp_path, template_file, monkeypatch):
    assert videoalign.read_template(template_file).strip() == TEMPLATE
    plain = tmp_path / "t.txt"
    plain.write_text(TEMPLATE)
    assert videoalign.read_template(plain) == TEMPLATE
    monkeypatch.setenv(videoalign.TEMPLATE_ENV, str(plain))
    assert videoalign.read_template(None) == TEMPLATE
    monkeypatch.delenv(videoalign.TEMPLATE_ENV)
    with pytest.raises(ConfigError, match="template_file=PATH"):
        videoalign.read_template(None)
    plain.write_text("no tokens {text_prompt}")
    with pytest.raises(ConfigError, match="lacks"):
        videoalign.read_template(plain)
    (tmp_path / "p.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match=videoalign.TEMPLATE_CONSTANT):
        videoalign.read_template(tmp_path / "p.py")


def test_missing_base_says_how_to_give_it(tmp_path, base, template_file):
    write_released(tmp_path, base)
    config = json.loads((tmp_path / "model_config.json").read_text())
    config["model_config"]["model_name_or_path"] = "Qwen/Qwen2-VL-2B-Instruct"
    (tmp_path / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="base=PATH"):
        VideoReward.from_pretrained(tmp_path, template_file=str(template_file))
    assert VideoReward.from_pretrained(tmp_path, base=str(base), template_file=str(template_file)) is not None


def test_sampling_defaults_are_a_sampling_config():
    s = videoalign.sampling_defaults(fps=1.0, max_pixels=448 * 448)
    assert isinstance(s, SamplingConfig) and s.convention == "qwen" and s.max_pixels == 448 * 448


def test_init_from_keeps_the_released_conventions_and_trains(tmp_path, base, template_file):
    """train-reward init_from=RELEASED: the driver adopts the checkpoint's conventions and sampling; the worker's
    model starts as the released function (fresh LoRA, B = 0), trains, and saves them in our layout."""
    from raypipe.config import load_config
    from raypipe.recipes.train_reward import RewardTrainConfig, _adopt_init
    from raypipe.reward.losses import bt_loss
    from raypipe.reward.training import model_from_init

    folder = tmp_path / "VideoReward"
    write_released(folder, base, output_dim=3)
    overrides = [f"init_from={folder}", f"template_file={template_file}", "model.dimensions=[VQ]", "model.lora.r=4"]
    cfg = _adopt_init(load_config(RewardTrainConfig, None, overrides))
    m = cfg.model
    assert (m.template, m.positions, m.head_per_dimension, m.dimensions) == ("videoalign", "1d", True, DIMS3)
    assert cfg.data.sampling.convention == "qwen" and cfg.data.sampling.min_pixels == 128 * 28 * 28
    model = model_from_init(cfg.init_from, cfg.model, cfg.base, cfg.template_file)
    start = VideoReward.from_pretrained(folder, template_file=str(template_file))
    frames, prompts = clips(), ["a red circle moving left", "a blue square"]
    torch.testing.assert_close(model.score(frames, prompts), start.score(frames, prompts), atol=1e-5, rtol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any(".visual." in n for n in trainable)
    assert {"head.weight", "reward_embeds"} <= trainable and not any("embed_tokens" in n for n in trainable)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):  # A preferred on every dimension
        r = model(model.processor(frames, prompts))
        loss, _ = bt_loss(r[:1], r[1:], torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned = model.score(frames, prompts)
    assert not torch.allclose(tuned, start.score(frames, prompts), atol=1e-4)
    model.save_pretrained(tmp_path / "tuned")
    saved = json.loads((tmp_path / "tuned" / "reward_config.json").read_text())
    assert (saved["template"], saved["positions"], saved["head_per_dimension"]) == ("videoalign", "1d", True)
    again = VideoReward.from_pretrained(tmp_path / "tuned", template_file=str(template_file))
    torch.testing.assert_close(again.score(frames, prompts), tuned, atol=1e-4, rtol=1e-4)  # merged vs adapters


def test_chat_template_from_the_processor_file(tmp_path, base):
    """Qwen2-VL ships its chat template in chat_template.json too; a tokenizer without one takes it from there."""
    from transformers import AutoTokenizer

    folder = tmp_path / "b"
    tok = build_tiny_tokenizer()
    tok.save_pretrained(folder)
    loaded = AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ConfigError, match="no chat template"):
        videoalign.ensure_chat_template(loaded, str(folder))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT}))
    videoalign.ensure_chat_template(loaded, str(folder))
    assert loaded.chat_template == CHAT


def test_export_of_a_tied_model_loads_strictly_the_official_way(tmp_path, base, template_file):
    """Qwen2-VL-2B ties lm_head to the embeddings. The official loader builds the base, adds the three tokens,
    resizes and loads model.pth strictly, lm_head after embed_tokens into the one table: the reward rows must
    survive that. Exported without norm stats (no inference_config)."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    tied = tmp_path / "tied"
    m = Qwen2VLForConditionalGeneration.from_pretrained(base)
    m.config.tie_word_embeddings = True
    m.tie_weights()
    m.save_pretrained(tied)
    AutoTokenizer.from_pretrained(base).save_pretrained(tied)
    torch.manual_seed(1)
    model = VideoReward.build(RewardModelConfig(name_or_path=str(tied), template="videoalign", positions="1d"),
                              template_file=str(template_file))  # fmt: skip
    with torch.no_grad():
        model.reward_embeds.add_(torch.randn_like(model.reward_embeds))  # trained rows, unlike the table's
    out = videoalign.export(model, tmp_path / "va", base=str(tied), sampling_cfg=videoalign.sampling_defaults())
    assert "inference_config" not in json.loads((out / "model_config.json").read_text())
    state = torch.load(out / "checkpoint-0" / "model.pth", weights_only=True)
    official = Qwen2VLForConditionalGeneration.from_pretrained(tied)  # the official steps, in 5's names
    tok = AutoTokenizer.from_pretrained(tied)
    tok.add_special_tokens({"additional_special_tokens": [f"<|{d}_reward|>" for d in DIMS3]})
    official.resize_token_embeddings(len(tok))
    head = state.pop("rm_head.weight")
    official.load_state_dict({videoalign.current_name(k): v for k, v in state.items()}, strict=True)
    ids = tok.convert_tokens_to_ids([f"<|{d}_reward|>" for d in DIMS3])
    rows = official.get_input_embeddings().weight[ids]
    torch.testing.assert_close(rows, model.reward_embeds.detach())
    torch.testing.assert_close(head, model.head.weight.detach())
    loaded = VideoReward.from_pretrained(out, template_file=str(template_file))
    frames, prompts = clips(), ["a red circle moving left", "a blue square"]
    torch.testing.assert_close(loaded.score(frames, prompts), model.score(frames, prompts), atol=1e-6, rtol=1e-6)


def test_lora_on_the_head_and_a_missing_embedding_table(tmp_path, base, template_file):
    """The official default puts LoRA on rm_head too (only `visual` excluded): merged like the others. A checkpoint
    without the embedding table (the reward rows) is refused instead of scoring with random rows."""
    state, lora, head = write_released(tmp_path / "a", base)
    path = tmp_path / "a" / "checkpoint-12" / "model.pth"
    sd = torch.load(path, weights_only=True)
    a, b = 0.1 * torch.randn(R, head.shape[1]), 0.1 * torch.randn(head.shape[0], R)
    sd["base_model.model.rm_head.base_layer.weight"] = sd.pop("base_model.model.rm_head.weight")
    sd["base_model.model.rm_head.lora_A.default.weight"], sd["base_model.model.rm_head.lora_B.default.weight"] = a, b
    torch.save(sd, path)
    model = VideoReward.from_pretrained(tmp_path / "a", template_file=str(template_file))
    torch.testing.assert_close(model.head.weight.detach(), head + (ALPHA / R) * b @ a)
    del sd["base_model.model.model.embed_tokens.weight"]
    torch.save(sd, path)
    with pytest.raises(ConfigError, match="no embed_tokens"):
        VideoReward.from_pretrained(tmp_path / "a", template_file=str(template_file))


def test_template_order_and_braces_are_checked(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text(
        TEMPLATE.replace("<|VQ_reward|>", "X").replace("<|TA_reward|>", "<|VQ_reward|>").replace("X", "<|TA_reward|>")
    )
    with pytest.raises(ConfigError, match="order"):
        videoalign.read_template(bad)
    bad.write_text(TEMPLATE + " {other}")
    with pytest.raises(ConfigError, match="format string"):
        videoalign.read_template(bad)
