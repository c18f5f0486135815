"""raypipe train-online end to end on a local Ray (tiny generator, tiny reward): rounds.jsonl has a line per round
with its reward statistics and policy version; the rollout actors sample with exactly the learner's adapters
(hashes) and the adapters move between rounds; a rerun with more rounds resumes at the last finished round with
the same prompts and versions (and scores through the Serve pool where the first run used reward actors); online
DPO trains on best-vs-worst pairs; a dead pool actor is replaced; the guard's fallback adapters; bad settings fail
before Ray."""

import json

import pytest

from raypipe.config import ConfigError, load_config
from raypipe.recipes.train_online import OnlineConfig
from raypipe.recipes.train_online import run as run_online

TINY = [
    "train.prompts_per_round=2",
    "train.k=2",
    "train.steps=3",
    "train.batch=2",
    "train.train_fraction=0.5",
    "clip.frames=5",
    "clip.height=16",
    "clip.width=16",
    "prompts=4",
    "progress=false",
]


def _rounds(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_grpo_rounds_sync_weights_and_resume(ray_local, reward_checkpoint, tmp_path):
    out = tmp_path / "online"
    args = [*TINY, f"reward={reward_checkpoint}", f"out={out}"]
    # the first run scores with a pool of reward actors, the resumed one with the Serve deployment (the default)
    first = run_online(
        load_config(OnlineConfig, "configs/online_tiny.yaml", [*args, "train.rounds=2", "reward_pool.kind=actors"])
    )
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [0, 1] and [r["version"] for r in rounds] == [0, 1]
    for r in rounds:
        assert r["samples"] == 4 and r["samples_ok"] + sum(r["errors"].values()) == 4
        assert set(r["reward_mean"]) == {"VQ", "MQ", "TA"} and r["weighted_mean"] is not None
        assert r["actor_hashes"] == [r["learner_hash"]]  # the pool sampled with the learner's adapters
        assert r["trained_transitions"] == 2 * r["samples_ok"]  # 2 of 3 steps (round(0.5·3)) per sample
        assert r["kl"] is not None and r["kl"] >= 0 and set(r["time_s"]) == {"rollout", "reward", "train", "sync"}
        assert "oracle_mean" in r and r["judge"] is not None  # the guard's judge: the oracle, every round
    assert rounds[0]["learner_hash"] != rounds[1]["learner_hash"]  # the update moved the adapters
    assert rounds[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # round 0: the policy is the reference (B = 0)
    assert (out / "final" / "pytorch_lora_weights.safetensors").exists() and first["rounds"] == 2

    again = run_online(load_config(OnlineConfig, "configs/online_tiny.yaml", [*args, "train.rounds=3"]))
    resumed = _rounds(out)
    assert [r["round"] for r in resumed] == [0, 1, 2] and resumed[:2] == rounds  # the finished rounds kept as they were
    assert [r["at_step"] for r in again["resumes"]] and resumed[2]["version"] == 2
    assert resumed[2]["actor_hashes"] == [resumed[2]["learner_hash"]] != [rounds[1]["learner_hash"]]


@pytest.mark.slow
def test_online_dpo_pairs_best_and_worst(ray_local, reward_checkpoint, tmp_path):
    out = tmp_path / "dpo"
    args = [*TINY, f"reward={reward_checkpoint}", f"out={out}", "train.algo=dpo", "train.rounds=1", "train.k=3"]
    args += ["reward_pool.kind=actors", "train.lambda_sft=0.5", "real_synth=2"]  # + flow matching on real videos
    run_online(load_config(OnlineConfig, "configs/online_tiny.yaml", args))
    (r,) = _rounds(out)
    assert r["samples"] == 6 and r["pairs"] == 2 and r["loss"] is not None  # one pair per prompt
    assert r["sft_loss"] > 0 and (out / "real" / "manifest.parquet").exists()
    assert r["actor_hashes"] == [r["learner_hash"]]


def test_bad_settings_fail_before_ray(reward_checkpoint, tmp_path, monkeypatch):
    import raypipe.recipes.train_online as online

    monkeypatch.setattr(online, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    base = [f"out={tmp_path / 'o'}", f"reward={reward_checkpoint}"]
    for bad, message in [
        ("train.algo=ppo", "train.algo must be one of"),
        ("train.k=1", "train.k must be >= 2"),
        ("lora.enabled=false", "LoRA"),
        ("weights={Style: 1}", "weights name"),
        ("train.train_fraction=0", "train_fraction"),
        ("reward_pool.kind=http", "reward_pool.kind"),
        ("guard.judge=/nowhere", "guard.judge"),
        ("train.lambda_sft=1", "real videos"),
        ("train.noise_level=0", "noise_level > 0"),
        ("train.zero_stage=3", "ZeRO stage 0 or 2"),
        ("train.batch=0", "train.batch must be >= 1"),
        ("lora.dropout=0.1", "lora.dropout=0"),
        ("rollout.actors=0", "actors must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            run_online(load_config(OnlineConfig, "configs/online_tiny.yaml", [*base, bad]))
    with pytest.raises(ConfigError, match="reward"):
        run_online(load_config(OnlineConfig, "configs/online_tiny.yaml", [f"out={tmp_path / 'o'}", "reward="]))


def test_a_killed_pool_actor_is_replaced_and_its_share_redone(ray_local, tmp_path):
    """`_call_all` (how a round calls its rollout and reward pools): an actor that dies mid-call is restarted by
    Ray and the same call (same seeds, same weights) sent again; the round gets every result."""
    import os

    from raypipe.distributed.online import _call_all

    @ray_local.remote(max_restarts=1)
    class Flaky:
        def work(self, x, marker):
            if not os.path.exists(marker):  # the first call kills the process, as an OOM kill would
                open(marker, "w").close()
                os._exit(1)
            return x * 2

    steady, flaky = Flaky.remote(), Flaky.remote()
    (tmp_path / "steady").touch()
    results = _call_all([(steady.work, (1, str(tmp_path / "steady"))), (flaky.work, (5, str(tmp_path / "flaky")))])
    assert results == [2, 10]


def test_the_guard_keeps_the_best_rounds_adapters(tmp_path):
    """Rank 0's bookkeeping for the guard: the adapters that sampled the round the judge liked best are kept in
    OUT/best_round and put back into the policy when the guard stops training."""
    import torch

    from raypipe.distributed.online import lora_state, state_hash
    from raypipe.flow.families import load_family, make_tiny_generator
    from raypipe.flow.lora import add_lora
    from raypipe.flow.online_training import keep_if_best, restore_best

    gen = load_family(make_tiny_generator("wan", tmp_path / "gen"))
    add_lora(gen.transformer, 4, 4, 0.0, gen.lora_targets)
    progress, folder = {}, tmp_path / "best_round"
    states = []
    for rnd, judge in enumerate([0.2, 0.5, None, 0.4]):
        with torch.no_grad():
            for name, p in gen.transformer.named_parameters():
                if "lora_B" in name:
                    p.add_(0.01 * (rnd + 1))
        states.append(lora_state(gen.transformer))
        keep_if_best(progress, rnd, judge, states[-1], folder)
    assert progress["best"] == {"round": 1, "judge": 0.5}
    assert restore_best(gen.transformer, folder, progress["best"]["round"])
    assert not restore_best(gen.transformer, folder, 3)  # a round never kept
    assert state_hash(lora_state(gen.transformer)) == state_hash(states[1]) != state_hash(states[3])
