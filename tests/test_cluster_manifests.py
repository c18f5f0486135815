"""cluster/ and serve/: every manifest parses, has what its kind requires, and says what our code accepts.

- the cluster-launcher YAML against Ray's own autoscaler schema (ray-schema.json + its cross-field checks);
- KubeRay RayCluster / RayJob / RayService: apiVersion ray.io/v1, the fields KubeRay requires, the same image and
  Ray version everywhere, the shared volume mounted in every pod;
- every RayJob entrypoint: a jobs/ script whose argv our CLI parses and whose config + overrides load;
- every Serve config (serve/config.yaml, RayService.serveConfigV2) against Ray Serve's `ServeDeploySchema`, with
  import paths that resolve to our app builders;
- the runtime env file builds a `ray.runtime_env.RuntimeEnv`.
"""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "cluster" / "kuberay"
IMAGE = "ghcr.io/your-org/raypipe:0.1.0"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _ray_version() -> str:
    import ray

    return ray.__version__


def test_cluster_launcher_yaml_passes_rays_schema():
    cfg = _load(REPO / "cluster" / "aws-gpu.yaml")
    _validate_launcher(cfg)  # raises on a schema violation or e.g. an unknown head_node_type
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert _ray_version() in cfg["docker"]["image"]
    assert any("constraints.txt" in c for c in cfg["setup_commands"])
    assert cfg["file_mounts"]["/home/ray/raypipe"] == "."


def _validate_launcher(cfg: dict) -> dict:
    """What `ray up` does before launching anything: fill the provider's defaults, then Ray's schema checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(cfg)
    validate_config(cfg)
    return cfg


def test_cluster_launcher_schema_check_is_not_vacuous():
    cfg = _load(REPO / "cluster" / "aws-gpu.yaml")
    cfg["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError):
        _validate_launcher(cfg)
    cfg = _load(REPO / "cluster" / "aws-gpu.yaml")
    cfg["max_workers"] = "many"
    with pytest.raises(Exception):  # noqa: B017 - any schema error will do (pydantic or ray)
        _validate_launcher(cfg)


def test_runtime_env_file_builds_a_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = _load(REPO / "cluster" / "runtime_env.yaml")
    RuntimeEnv(**env)
    assert env["working_dir"] == "."
    assert {".git", ".venv", "demo-out"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray rejects non-string env values


def _pod_specs(cluster_spec: dict):
    yield cluster_spec["headGroupSpec"]["template"]["spec"]
    for group in cluster_spec["workerGroupSpecs"]:
        yield group["template"]["spec"]


def _check_cluster_spec(spec: dict, where: str):
    assert spec["rayVersion"] == _ray_version(), where
    assert "rayStartParams" in spec["headGroupSpec"], where
    assert spec["workerGroupSpecs"], where
    names = set()
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] not in names, where
        names.add(group["groupName"])
        assert "rayStartParams" in group, where
        assert group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 10**6), where
    for pod in _pod_specs(spec):
        assert pod["containers"], where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert c["image"] == IMAGE, where
            assert c["resources"]["limits"], where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/shared") == "shared", f"{where}: /shared not mounted"
            assert all(name in volumes for name in mounts.values()), where
        assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == "raypipe-shared", where


def test_kuberay_raycluster():
    doc = _load(KUBE / "raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"], "raycluster.yaml")
    pvc = _load(KUBE / "shared-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "raypipe-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize(
    "job, command", [("train-reward", "train-reward"), ("relabel", "relabel"), ("train-flow", "train-flow")]
)
def test_kuberay_rayjob_entrypoint_is_a_valid_raypipe_command(job, command):
    from ray.runtime_env import RuntimeEnv

    from raypipe.cli import build_parser

    doc = _load(KUBE / f"rayjob-{job}.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    _check_cluster_spec(spec["rayClusterSpec"], job)
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("/home/ray/raypipe/jobs/")
    script = REPO / "jobs" / Path(argv[1]).name
    assert script.exists() and f'"{command}"' in script.read_text()  # the job script runs this subcommand
    args = build_parser().parse_args([command, *argv[2:]])  # our CLI accepts every flag
    in_image = {str(p): p for p in (REPO / "configs").glob("*.yaml")}
    if getattr(args, "config", None):  # the config exists in the image and loads with the overrides
        local = REPO / "configs" / Path(args.config).name
        assert args.config == f"/home/ray/raypipe/configs/{local.name}" and str(local) in in_image
        _load_job_config(command, local, args.overrides)


def _load_job_config(command: str, path: Path, overrides: list[str]):
    from raypipe.config import load_config
    from raypipe.recipes.train_flow import FlowTrainConfig
    from raypipe.recipes.train_reward import RewardTrainConfig

    cls = {"train-reward": RewardTrainConfig, "train-flow": FlowTrainConfig}[command]
    cfg = load_config(cls, path, overrides)
    assert cfg.train.use_gpu is True
    assert (cfg.model.dtype if command == "train-reward" else cfg.dtype) == "bfloat16"
    return cfg


def _check_serve_config(cfg: dict, where: str):
    from ray.serve.schema import ServeDeploySchema

    schema = (
        ServeDeploySchema.parse_obj(cfg)
        if hasattr(ServeDeploySchema, "parse_obj")
        else ServeDeploySchema.model_validate(cfg)
    )
    apps = {a.name: a for a in schema.applications}
    assert set(apps) == {"reward", "generate"}, where
    assert apps["reward"].route_prefix == "/" and apps["generate"].route_prefix == "/generate", where
    for app in apps.values():
        module, attr = app.import_path.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), where
    assert {d.name for d in apps["reward"].deployments} == {"RewardModel", "RewardAPI"}, where
    assert {d.name for d in apps["generate"].deployments} == {"GenerateAPI"}, where
    from raypipe.config import build_config
    from raypipe.serve.config import GenerateAppConfig, RewardAppConfig

    for name, cls in (("reward", RewardAppConfig), ("generate", GenerateAppConfig)):
        build_config(cls, apps[name].args)  # the apps' args are typed: an unknown key or a wrong type fails here
    return apps


def test_serve_config_file_passes_serve_schema():
    _check_serve_config(_load(REPO / "serve" / "config.yaml"), "serve/config.yaml")


def test_serve_schema_check_is_not_vacuous():
    from ray.serve.schema import ServeDeploySchema

    cfg = _load(REPO / "serve" / "config.yaml")
    cfg["applications"][0]["deployments"][0]["max_ongoing_requests"] = "lots"
    with pytest.raises(Exception):  # noqa: B017 - any schema error will do (pydantic or ray)
        ServeDeploySchema.parse_obj(cfg) if hasattr(
            ServeDeploySchema, "parse_obj"
        ) else ServeDeploySchema.model_validate(cfg)


def test_kuberay_rayservice():
    doc = _load(KUBE / "rayservice.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    _check_cluster_spec(doc["spec"]["rayClusterConfig"], "rayservice.yaml")
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])  # KubeRay takes it as a string
    apps = _check_serve_config(serve_cfg, "rayservice serveConfigV2")
    model = next(d for d in apps["reward"].deployments if d.name == "RewardModel")
    assert model.ray_actor_options.num_gpus == 1
    gpus = {
        g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    }
    assert any(v for v in gpus.values()), "replicas asking for a GPU need a GPU worker group"
    # the bearer token the apps read comes from a Secret in every pod that can host an ingress replica
    token_env = {a["name"]: a["args"]["auth_token_env"] for a in serve_cfg["applications"]}
    for pod in _pod_specs(doc["spec"]["rayClusterConfig"]):
        names = {e["name"] for e in pod["containers"][0].get("env", [])}
        assert set(token_env.values()) <= names


def test_real_size_configs_load():
    from raypipe.config import load_config
    from raypipe.recipes.train_flow import FlowTrainConfig
    from raypipe.recipes.train_latent_reward import LatentRewardConfig
    from raypipe.recipes.train_reward import RewardTrainConfig

    reward = load_config(RewardTrainConfig, REPO / "configs" / "reward_qwen2vl_2b.yaml")
    flow = load_config(FlowTrainConfig, REPO / "configs" / "flow_wan21_1.3b.yaml")
    latent = load_config(LatentRewardConfig, REPO / "configs" / "latent_reward_wan21_1.3b.yaml")
    # SPEC 3.1 / 5: the papers' LoRA and optimiser settings
    assert (reward.model.lora.r, reward.model.lora.alpha, reward.train.lr) == (64, 128, 2e-6)
    assert (flow.lora.r, flow.lora.alpha, flow.train.lr, flow.train.beta) == (64, 128, 5e-6, 500.0)
    assert flow.train.num_workers * flow.train.batch == 64  # the paper's batch
    assert flow.clip.frames % 4 == 1  # Wan's VAE: 4k + 1 frames
    assert latent.train.use_gpu and latent.data.labels == "model"
    # bf16 everywhere, and gradient checkpointing where `raypipe bench gpu` ran out of 80 GB without it
    assert reward.model.dtype == flow.dtype == latent.dtype == "bfloat16"
    assert reward.train.gradient_checkpointing and flow.train.gradient_checkpointing
    assert latent.train.gradient_checkpointing


def test_wan22_presets_load_and_fit_their_vaes():
    from raypipe.config import load_config
    from raypipe.flow.wan_build import TinyWanConfig
    from raypipe.recipes.train_flow import FlowTrainConfig

    ti2v = load_config(FlowTrainConfig, REPO / "configs" / "flow_wan22_ti2v_5b.yaml")
    a14b = load_config(FlowTrainConfig, REPO / "configs" / "flow_wan22_a14b.yaml")
    assert a14b.lora.experts == "both" and ti2v.lora.experts == "both"
    assert ti2v.dtype == a14b.dtype == "bfloat16" and ti2v.train.gradient_checkpointing
    # the clips fit each model's VAE: 4k + 1 frames, sides multiples of 2 x its spatial factor (TI2V 16, A14B 8)
    for cfg, shape in ((ti2v, TinyWanConfig.wan22_ti2v_5b()), (a14b, TinyWanConfig.wan22_a14b())):
        spatial = 2 ** (len(shape.vae_dim_mult) - 1) * (shape.vae_patch_size or 1)
        assert cfg.clip.frames % 4 == 1 and cfg.clip.height % (2 * spatial) == 0 == cfg.clip.width % (2 * spatial)
    assert TinyWanConfig.wan22_a14b().experts == 2 and TinyWanConfig.wan22_ti2v_5b().z_dim == 48
    i2v = load_config(FlowTrainConfig, REPO / "configs" / "flow_wan21_i2v_14b.yaml")
    assert i2v.data.image == "first_frame" and i2v.dtype == "bfloat16" and i2v.clip.frames % 4 == 1
    real = TinyWanConfig.wan21_i2v_14b()  # 36 input channels = 16 latent + 4 mask + 16 condition; 257 CLIP states
    assert real.i2v and 2 * real.z_dim + 4 == 36 and (real.image_size // real.image_patch) ** 2 + 1 == 257


@pytest.mark.parametrize(
    "name, spatial, temporal",
    [("flow_hunyuan_video", 16, 4), ("flow_hunyuan_video_15", 16, 4), ("flow_ltx_video", 32, 8), ("flow_ltx2", 32, 8)],
)
def test_hunyuan_and_ltx_presets_load_and_fit_their_vaes(name, spatial, temporal):
    from raypipe.config import load_config
    from raypipe.recipes.train_flow import FlowTrainConfig

    cfg = load_config(FlowTrainConfig, REPO / "configs" / f"{name}.yaml")
    assert cfg.dtype == "bfloat16" and cfg.train.gradient_checkpointing and cfg.lora.enabled
    assert cfg.clip.frames % temporal == 1 and cfg.clip.height % spatial == 0 == cfg.clip.width % spatial
