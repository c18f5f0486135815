"""raypipe train-online end to end on a local Ray (tiny generator, tiny reward): rounds.jsonl has a line per round
with its reward statistics and policy version; the rollout actors sample with exactly the learner's adapters
(hashes) and the adapters move between rounds; a rerun with more rounds resumes at the last finished round with
the same prompts and versions (and scores through the Serve pool where the first run used reward actors); online
DPO trains on best-vs-worst pairs; a dead pool actor is replaced; the guard's fallback adapters; bad settings fail
before Ray."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raypipe.config import ConfigError, load_config
from raypipe.data.prompts import read_prompts
from raypipe.flow.online import round_prompts
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
CONFIG = "configs/online_tiny.yaml"


def _rounds(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


TIMINGS = ("time_s", "samples_per_s")


def _wait_for_the_dead_jobs_workers(timeout: float = 60.0) -> None:
    """Until no Ray Train worker is alive on the shared cluster (Ray removes a dead driver's actors shortly after)."""
    from ray._private import state  # the GCS's actor table (the state API needs the dashboard, off in tests)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        actors = state.actors().values()
        if not any(a.get("State") == "ALIVE" and "RayTrainWorker" in (a.get("ActorClassName") or "") for a in actors):
            return
        time.sleep(0.5)
    raise AssertionError("the killed run's Ray Train workers are still alive")


def _content(record: dict) -> dict:
    """A round's line without its timings (what a redone round must reproduce exactly)."""
    return {k: v for k, v in record.items() if k not in TIMINGS}


@pytest.mark.slow
def test_grpo_rounds_sync_weights_and_a_killed_driver_resumes(ray_local, reward_checkpoint, tmp_path):
    out = tmp_path / "online"
    args = [*TINY, f"reward={reward_checkpoint}", "train.rounds=5"]
    # the first run: its own driver process on the shared cluster, scoring with reward actors, SIGKILLed as soon as
    # two rounds are on disk, i.e. in the middle of round 2
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "raypipe.cli", "train-online", "--config", CONFIG, "--out", str(out)]
    log = tmp_path / "first-run.log"
    with open(log, "wb") as sink:
        driver = subprocess.Popen(
            [*cmd, *args, "reward_pool.kind=actors", f"address={address}"],
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 600
    while not (out / "rounds.jsonl").exists() or len((out / "rounds.jsonl").read_text().splitlines()) < 2:
        if driver.poll() is not None or time.monotonic() > deadline:
            os.killpg(driver.pid, signal.SIGKILL)
            raise AssertionError(f"the first run never got round 1 on disk:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    _wait_for_the_dead_jobs_workers()  # its Ray Train workers could otherwise still write a line
    before = _rounds(out)
    assert [r["round"] for r in before] == list(range(len(before))) and 2 <= len(before) < 5

    # the same command (in this process, through the Serve pool, rollouts overlapped with training) resumes at the
    # last checkpoint Ray Train had committed: a round whose line was written but whose checkpoint was not is redone
    # with the same prompts, seeds and version, so the same numbers (only its timings differ)
    again = run_online(load_config(OnlineConfig, CONFIG, [*args, f"out={out}", "train.overlap=true"]))
    rounds = _rounds(out)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4] and again["rounds"] == 5
    resumed_at = again["resumes"][0]["at_round"]
    assert 1 <= resumed_at <= len(before) and rounds[:resumed_at] == before[:resumed_at]  # committed: untouched
    # the round the resume starts with is sampled as before (synchronously, the same version): the same numbers
    redone = min(len(before), resumed_at + 1)
    assert [_content(r) for r in rounds[:redone]] == [_content(r) for r in before[:redone]]
    prompts = read_prompts("4", 0)
    for r in rounds:  # the same prompts as an uninterrupted run: a function of (seed, round) only
        assert r["prompts"] == round_prompts(prompts, 2, 2, 0, r["round"])[0]
        assert r["samples"] == 4 and r["samples_ok"] + sum(r["errors"].values()) == 4
        assert set(r["reward_mean"]) == {"VQ", "MQ", "TA"} and r["weighted_mean"] is not None
        assert r["actor_hashes"] == [r["learner_hash"]]  # the pool sampled with the learner's adapters
        assert r["trained_transitions"] == 2 * r["samples_ok"]  # 2 of 3 steps (round(0.5·3)) per sample
        assert r["kl"] is not None and r["kl"] >= 0
        assert set(r["time_s"]) == {"rollout", "reward", "train", "sync", "wait", "round"}
        assert "oracle_mean" in r and r["judge"] is not None  # the guard's judge: the oracle, every round
    assert rounds[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # round 0: the policy is the reference (B = 0)
    # up to the resume and at it, every round samples with the learner's current version; with overlap each later
    # round samples with the version before (one round off-policy: the same adapters as the round before)
    for r in rounds[: resumed_at + 1]:
        assert r["version"] == r["learner_version"] == r["round"]
        # the learner recomputes the rollout's transitions exactly: ρ = 1 before the round's first update
        assert r["ratio_first"] == pytest.approx(1.0, abs=1e-4)
    for r in rounds[resumed_at + 1 :]:
        assert r["version"] == r["learner_version"] - 1
    # a version names one set of adapters (an overlapped round re-uses the version before), and every update moved
    # them (the killed run's workers can outlive its driver by a round or two: then fewer rounds are overlapped)
    hashes = {(r["version"], r["learner_hash"]) for r in rounds}
    overlapped = len(rounds) - (resumed_at + 1)
    assert len(hashes) == len({v for v, _ in hashes}) == len({h for _, h in hashes}) == 5 - min(1, overlapped)
    assert (out / "final" / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.slow
def test_online_dpo_pairs_best_and_worst(ray_local, reward_checkpoint, critic_checkpoint, tmp_path):
    from raypipe.flow.families import load_family, make_tiny_generator
    from raypipe.nrg.model import LatentReward

    out = tmp_path / "dpo"
    generator = make_tiny_generator("wan", tmp_path / "generator")  # what the run would build, made here first
    latent = LatentReward.for_family(load_family(generator), ("VQ", "MQ"), k_blocks=1)
    latent.save_pretrained(tmp_path / "latent")
    args = [*TINY, f"reward={reward_checkpoint}", f"out={out}", "train.algo=dpo", "train.rounds=3", "train.k=3"]
    args += [f"generator={generator}", f"latent_rewards={{lat: {tmp_path / 'latent'}}}"]  # scored on the latents
    args += [f"critics={{crit: {critic_checkpoint}}}"]  # a LiFT critic that answers VQ Good, MQ Bad, TA Normal
    args += ["reward_pool.kind=actors", "train.lambda_sft=0.5", "real_synth=2"]  # + flow matching on real videos
    args += ["train.ref_rounds=1"]  # the reference: the policy one round ago (round 0: the base)
    # a second reward beside the first (here the same checkpoint, so its scores must equal the first's), weighted in
    args += [f"extra_rewards={{again: {reward_checkpoint}}}", "weights={VQ: 1.0, again.MQ: 0.5}"]
    args += ["reward_pool.cpus=0.25", "guard.weights={VQ: 1.0}"]
    run_online(load_config(OnlineConfig, "configs/online_tiny.yaml", args))
    rounds = _rounds(out)
    for r in rounds:
        assert r["samples"] == 6 and r["pairs"] == 2 and r["loss"] is not None  # one pair per prompt
        assert r["sft_loss"] > 0 and r["actor_hashes"] == [r["learner_hash"]]
        mean = r["reward_mean"]
        assert set(mean) == {"VQ", "MQ", "TA", "again.VQ", "again.MQ", "again.TA", "lat.VQ", "lat.MQ"} | {
            "crit.VQ", "crit.MQ", "crit.TA"}  # fmt: skip
        assert (mean["crit.VQ"], mean["crit.MQ"], mean["crit.TA"]) == pytest.approx((0.9, 0.05, 0.2))  # SPEC §8
        assert all(mean[f"again.{d}"] == pytest.approx(mean[d], abs=1e-5) for d in ("VQ", "MQ", "TA"))
        assert r["weighted_mean"] == pytest.approx(mean["VQ"] + 0.5 * mean["again.MQ"], abs=2e-5)
        assert mean["lat.VQ"] != mean["lat.MQ"]  # two heads of the latent reward, each its own column
    assert (out / "real" / "manifest.parquet").exists() and len(rounds) == 3
    # the reference of round r is the policy round r − 1 started from (round 0: the base)
    assert [r["reference_hash"] for r in rounds] == ["base", rounds[0]["learner_hash"], rounds[1]["learner_hash"]]
    # each round's starting adapters kept while a later round may need them as its reference
    kept = sorted(p.name for p in (out / "policy_rounds").iterdir())
    assert kept == ["round_0001.safetensors", "round_0002.safetensors"]


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
        ("latent_rewards={lat: /nowhere}", "not a latent reward"),
        ("latent_rewards={a.b: /nowhere}", "latent_rewards: a name"),
        ("critics={crit: /nowhere}", "critics.crit"),
    ]:
        with pytest.raises(ConfigError, match=message):
            run_online(load_config(OnlineConfig, "configs/online_tiny.yaml", [*base, bad]))
    with pytest.raises(ConfigError, match="reward"):
        run_online(load_config(OnlineConfig, "configs/online_tiny.yaml", [f"out={tmp_path / 'o'}", "reward="]))


def test_a_killed_pool_actor_is_replaced_and_its_share_redone(ray_local, tmp_path):
    """`call_all` (how a round calls its rollout and reward pools): an actor that dies mid-call is restarted by
    Ray and the same call (same seeds, same weights) sent again; the round gets every result."""
    import os

    from raypipe.distributed.online import call_all

    @ray_local.remote(max_restarts=1)
    class Flaky:
        def work(self, x, marker):
            if not os.path.exists(marker):  # the first call kills the process, as an OOM kill would
                open(marker, "w").close()
                os._exit(1)
            return x * 2

    steady, flaky = Flaky.remote(), Flaky.remote()
    (tmp_path / "steady").touch()
    results = call_all([(steady.work, (1, str(tmp_path / "steady"))), (flaky.work, (5, str(tmp_path / "flaky")))])
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


def test_latent_scores_are_appended_after_the_reward_models_and_their_failures_are_errors(tmp_path):
    import numpy as np
    import torch

    from raypipe.distributed.online import latent_scores, with_latent_scores
    from raypipe.flow.families import load_family, make_tiny_generator
    from raypipe.nrg.model import LatentReward

    gen = load_family(make_tiny_generator("wan", tmp_path / "wan"))
    models = [LatentReward.for_family(gen, dims, k_blocks=1) for dims in (("VQ",), ("MQ", "TA"))]
    z = torch.randn(3, *gen.latent_shape(5, 16, 16), generator=torch.Generator().manual_seed(0))
    text = gen.encode_prompts(["a red circle", "a blue square", "a white triangle"])
    got = latent_scores(models, z, text)["latent_scores"]
    with torch.no_grad():  # each model at t = 0, side by side
        expected = torch.cat([m(z, torch.zeros(3), text) for m in models], dim=1).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert latent_scores([], z, text) == {}
    scored = {"scores": np.ones((3, 2)), "errors": [None, "decode: bad", None], "oracle": None}
    got[2, 1] = np.nan
    merged = with_latent_scores(scored, got)
    assert merged["scores"].shape == (3, 5) and np.array_equal(merged["scores"][:, :2], np.ones((3, 2)))
    assert merged["errors"] == [None, "decode: bad", "non_finite: a latent reward returned a non-finite score"]


def test_local_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """The learner's Ray Train workers run in their own folders: a relative reward (as a user types it) failed there
    after the pools had started. Local paths become absolute; URIs, hub names and the oracle stay."""
    from raypipe.recipes.train_online import _absolute_paths

    (tmp_path / "rm").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = OnlineConfig(reward="rm", generator="assets/tiny-generator", base="Qwen/Qwen2-VL-2B-Instruct",
                       critics={"c": "s3://bucket/critic"}, extra_rewards={"j": "rm"})  # fmt: skip
    out = _absolute_paths(cfg)
    assert out.reward == out.extra_rewards["j"] == str(tmp_path / "rm")
    assert Path(out.generator).is_absolute() and (Path(out.generator) / "model_index.json").exists()  # repo asset
    assert out.base == "Qwen/Qwen2-VL-2B-Instruct" and out.critics == {"c": "s3://bucket/critic"}
    assert out.guard.judge == "oracle"
