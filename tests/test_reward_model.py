"""VideoReward: processor layout vs transformers' own, token placement, trainable parts, save/load."""

import numpy as np
import pytest
import torch

from raypipe.reward.model import RewardModelConfig, VideoReward
from raypipe.reward.processor import reward_token, video_patches
from tests.conftest import moving_square_frames


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    return VideoReward.build(RewardModelConfig(), tiny_dir=tmp_path_factory.mktemp("tiny") / "backbone")


def test_video_patches_match_transformers_processor():
    """transformers' own (Pillow) Qwen2-VL image processor duplicates an image over the temporal patch; our
    video patches of [img, img] must equal its output exactly (same normalisation, same merge-block order)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    img = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    ref = Qwen2VLImageProcessorPil(do_resize=False)(images=[img], return_tensors="pt")
    ours, grid = video_patches(np.stack([img, img]))
    assert grid == tuple(ref["image_grid_thw"][0].tolist()) == (1, 4, 6)
    torch.testing.assert_close(ours, ref["pixel_values"], atol=1e-6, rtol=1e-6)


def test_video_patch_layout_by_hand():
    """Each patch is (channel, time, 14, 14); merge blocks of 2x2 patches are adjacent rows."""
    frames = np.zeros((2, 28, 56, 3), np.uint8)
    frames[1] = 255  # time 1 bright, time 0 dark
    frames[:, :, 28:, 0] = 128  # right merge block: red channel at mid grey
    patches, grid = video_patches(frames)
    assert grid == (1, 2, 4) and patches.shape == (8, 3 * 2 * 14 * 14)
    p = patches.reshape(8, 3, 2, 14, 14)
    lo = (0.0 - 0.48145466) / 0.26862954
    hi = (1.0 - 0.48145466) / 0.26862954
    mid = (128 / 255 - 0.48145466) / 0.26862954
    assert torch.allclose(p[:4, 0, 0], torch.tensor(lo)) and torch.allclose(p[:4, 0, 1], torch.tensor(hi))
    assert torch.allclose(p[4:, 0], torch.tensor(mid))  # rows 4..7: the second 2x2 merge block (columns 2, 3)


def test_odd_frame_count_repeats_last_frame():
    frames = moving_square_frames(5)
    a, grid = video_patches(frames)
    b, _ = video_patches(np.concatenate([frames, frames[-1:]]))
    assert grid[0] == 3 and torch.equal(a, b)


def test_template_places_reward_tokens(tiny_model):
    proc = tiny_model.processor
    enc = proc.encode(moving_square_frames(8), "a red circle moving left")
    tokens = proc.tokenizer.convert_ids_to_tokens(enc["input_ids"])
    vq, mq, ta = (tokens.index(reward_token(d)) for d in ("VQ", "MQ", "TA"))
    end_video = tokens.index("<|vision_end|>")
    prompt_at = tokens.index("red")
    assert end_video < vq < mq < prompt_at < ta == len(tokens) - 2  # ... prompt <|TA_reward|> <|im_end|>
    assert enc["reward_positions"] == [vq, mq, ta]
    assert sum(t == 2 for t in enc["mm_token_type_ids"]) == tokens.count("<|video_pad|>") == 4 * 2 * 2


def test_context_agnostic_scores_ignore_the_prompt(tiny_model):
    frames = moving_square_frames(8)
    r = tiny_model.score([frames, frames], ["a red circle moving left", "a blue triangle moving up fast ."])
    assert torch.allclose(r[0, :2], r[1, :2], atol=1e-6)  # VQ, MQ see only the video (causal attention)
    assert not torch.allclose(r[0, 2], r[1, 2])  # TA reads the prompt


def test_batched_equals_single_with_padding(tiny_model):
    f1, f2 = moving_square_frames(8, seed=1), moving_square_frames(8, seed=2)
    both = tiny_model.score([f1, f2], ["a red circle moving left", "a green square"])
    one = tiny_model.score([f2], ["a green square"])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_only_intended_parameters_train(tiny_model):
    names = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert "reward_embeds" in names and "head.weight" in names
    assert any("lora_A" in n for n in names) and any(".visual." in n for n in names)
    assert not any("embed_tokens" in n for n in names)
    assert not any("language_model" in n and "lora_" not in n for n in names)


def test_last_token_variant(tmp_path):
    m = VideoReward.build(RewardModelConfig(head="last_token"), tiny_dir=tmp_path / "bb")
    enc = m.processor.encode(moving_square_frames(8), "a red circle")
    assert enc["reward_positions"] == [len(enc["input_ids"]) - 1] * 3
    assert m.reward_embeds is None and m.head.out_features == 3
    assert m.score([moving_square_frames(8)], ["a red circle"]).shape == (1, 3)


def test_save_and_load_without_ray(tiny_model, tmp_path):
    frames = [moving_square_frames(8, seed=3)]
    with torch.no_grad():
        tiny_model.head.weight.add_(0.5)  # make the head differ from any fresh init
    before = tiny_model.score(frames, ["a red circle moving left"])
    tiny_model.save_pretrained(tmp_path / "ckpt", norm_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    loaded = VideoReward.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.score(frames, ["a red circle moving left"]), before)
    assert loaded.norm_stats["std"] == [1, 1, 1]
    with pytest.raises(FileNotFoundError):
        VideoReward.from_pretrained(tmp_path)
