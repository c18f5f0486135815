"""eval-flow: win rate by hand; a tiny base vs LoRA comparison with identical noise, reward and oracle verdicts."""

import json

import pytest
import torch

from raypipe.data.prompts import read_prompts
from raypipe.flow.evaluation import win_rate
from raypipe.recipes.eval_flow import FlowEvalConfig
from raypipe.recipes.eval_flow import run as run_eval_flow


def test_win_rate_by_hand():
    assert win_rate([1, 2, 3], [1, 1, 4]) == pytest.approx(0.5)  # tie ½ + win 1 + loss 0
    assert win_rate([2, 2], [1, 1]) == 1.0


def test_read_prompts(tmp_path):
    a, b = read_prompts("5", 0), read_prompts("5", 0)
    assert a == b and len(a) == 5 and all(p.startswith("a ") and " moving " in p for p in a)
    (tmp_path / "p.txt").write_text("a red circle moving left\n\na blue square moving up\n")
    assert read_prompts(str(tmp_path / "p.txt"), 0) == ["a red circle moving left", "a blue square moving up"]


def test_prompts_given_as_text_and_a_missing_file(tmp_path):
    from raypipe.config import ConfigError

    assert read_prompts("a red circle moving left", 0) == ["a red circle moving left"]
    assert read_prompts("a red circle moving left| a blue square moving up", 0) == [
        "a red circle moving left",
        "a blue square moving up",
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompts(str(tmp_path / "missing.txt"), 0)


def test_tiny_base_vs_lora(reward_checkpoint, tmp_path):
    from raypipe.flow.family import WanFamily
    from raypipe.flow.lora import add_lora, lora_parameters, save_lora
    from raypipe.flow.wan_build import make_tiny_wan

    base = make_tiny_wan(tmp_path / "wan")
    gen = WanFamily.load(base)
    add_lora(gen.transformer, r=4, alpha=4)
    with torch.no_grad():
        for p in lora_parameters(gen.transformer):
            p.add_(0.2 * torch.randn_like(p))
    save_lora(gen, tmp_path / "lora")
    cfg = FlowEvalConfig(
        generator=str(base),
        lora=str(tmp_path / "lora"),
        reward=reward_checkpoint,
        prompts="4",
        out=str(tmp_path / "eval"),
        steps=2,
        grid=2,
    )
    report = run_eval_flow(cfg)
    assert report["prompts"] == 4
    assert set(report["reward_win_rate"]) == {"VQ", "MQ", "TA"}
    assert all(0.0 <= v <= 1.0 for v in [*report["reward_win_rate"].values(), *report["oracle_win_rate"].values()])
    for judge in ("reward", "oracle"):  # the per-prompt outcomes behind each win rate (what intervals resample)
        for dim, rate in report[f"{judge}_win_rate"].items():
            kept = report["outcomes"][judge][dim]
            assert len(kept) == 4 and set(kept) <= {0.0, 0.5, 1.0} and sum(kept) / 4 == pytest.approx(rate)
    assert len(list((tmp_path / "eval" / "videos" / "aligned").glob("*.mp4"))) == 4
    assert (tmp_path / "eval" / "grid.gif").stat().st_size > 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["prompts"] == 4


def test_a_whole_aligned_pipeline_of_either_family(reward_checkpoint, tmp_path):
    """`aligned=` takes a whole pipeline (LiFT's full fine-tuning); the same weights as the base tie everywhere
    (win rate exactly ½), for a CogVideoX pipeline as for Wan; lora and aligned together are refused."""
    from raypipe.config import ConfigError
    from raypipe.flow.families import make_tiny_generator

    base = make_tiny_generator("cogvideox", tmp_path / "cog")
    common = {"generator": str(base), "reward": reward_checkpoint, "prompts": "2", "steps": 2, "grid": 1}
    report = run_eval_flow(FlowEvalConfig(aligned=str(base), out=str(tmp_path / "eval"), **common))
    assert set(report["oracle_win_rate"].values()) == {0.5} and set(report["reward_win_rate"].values()) == {0.5}
    assert report["outcomes"]["oracle"]["MQ"] == [0.5, 0.5]  # every prompt a tie
    with pytest.raises(ConfigError, match="one of lora"):
        run_eval_flow(FlowEvalConfig(aligned=str(base), lora=str(base), out=str(tmp_path / "x"), **common))
