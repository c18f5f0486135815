"""The `raypipe` command: --help everywhere, probe's JSON contract, clean config errors."""

import json
import subprocess
import sys

import pytest

from raypipe.cli import build_parser, main

SUBCOMMANDS = [
    "probe",
    "synth",
    "oracle",
    "pairs",
    "train-reward",
    "eval-reward",
    "relabel",
    "train-flow",
    "pretrain-generator",
    "eval-flow",
    "demo",
    "bench",
]


def test_help_on_every_subcommand(capsys):
    for cmd in (
        [[]]
        + [[c] for c in SUBCOMMANDS]
        + [["bench", b] for b in ("decode", "reward-ablation", "reward-throughput", "relabel", "flow-memory")]
    ):
        with pytest.raises(SystemExit) as e:
            main(cmd + ["--help"])
        assert e.value.code == 0
        assert "usage: raypipe" in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "raypipe.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("raypipe ")


def test_probe_json(make_mp4, capsys):
    assert main(["probe", make_mp4("p.mp4", t=16, fps=8), "--fps", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fps"] == 8.0 and out["total_frames"] == 16
    assert out["indices"] == [0, 2, 4, 6, 9, 11, 13, 15]
    assert (out["height"], out["width"]) == (56, 56)


def test_probe_resized_size(make_mp4, capsys):
    assert main(["probe", make_mp4("w.mp4", t=8, h=360, w=640, fps=4), "--max-pixels", str(448 * 448)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["height"], out["width"]) == (336, 588)


def test_probe_error_json_and_exit_code(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "none.mp4")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == "missing" and "none.mp4" in out["message"]


def test_config_error_exits_2_with_message(tmp_path, capsys):
    assert main(["pairs", f"data.manifest={tmp_path / 'm.parquet'}", "data.sampling.bogus=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_manifest_error_exits_2_before_ray(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path_A,prompt,VQ\na.mp4,p,A\n")
    assert main(["pairs", f"data.manifest={tmp_path / 'm.csv'}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "column 'path_B'" in err and "m.csv" in err
    assert not (tmp_path / "o").exists()  # failed before any work: no output folder, no Ray job


def test_parser_lists_all_subcommands():
    text = build_parser().format_help()
    for cmd in SUBCOMMANDS:
        assert cmd in text


def test_every_job_lists_every_config_key_with_its_meaning(capsys):
    """`raypipe JOB --help` is generated from the recipe's config dataclass: every key, its default and a meaning."""
    from raypipe.cli import JOBS, recipe
    from raypipe.config import config_keys

    for command in JOBS:
        module, cls = recipe(command)
        assert callable(module.run), command
        keys = config_keys(cls)
        assert keys and all(meaning for _, _, meaning in keys), (command, [k for k, _, m in keys if not m])
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0
        for key, _, _ in keys:
            assert f"  {key} = " in out, (command, key)
        assert "--config" in out and "--out" in out


@pytest.mark.parametrize(
    "argv, named",
    [
        (["eval-reward", "batch_size=4"], "batch_size"),  # unknown key (the old name)
        (["relabel", "concurrency=many"], "concurrency"),  # wrong type
        (["train-flow", "train.lr=fast"], "train.lr"),
        (["eval-reward", "manifest=m.parquet"], "reward"),  # missing required value
        (["generate", "generator=/nonexistent/gen"], "/nonexistent/gen"),
    ],
)
def test_config_errors_exit_2_with_one_line_naming_the_key(argv, named, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "Traceback" not in err


def test_every_job_has_its_ray_job_entrypoint():
    """jobs/<job>.py runs `raypipe <job>`: the same code as a Ray job (`ray job submit -- python jobs/...`)."""
    from pathlib import Path

    from raypipe.cli import JOBS

    jobs = Path(__file__).resolve().parent.parent / "jobs"
    for command in JOBS:
        script = jobs / f"{command.replace('-', '_')}.py"
        assert script.exists() and f'main(["{command}", *sys.argv[1:]])' in script.read_text(), command


def test_overrides_may_follow_options(tmp_path, capsys):
    """`raypipe JOB a=1 --out DIR b=2`: every key=value is an override, wherever it stands; other strays are errors."""
    from raypipe.cli import build_parser

    assert main(["pairs", "--out", str(tmp_path / "o"), "data.manifest=m.parquet", "data.sampling.bogus=1"]) == 2
    assert "data.sampling" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pairs", "--out", str(tmp_path / "o"), "--bogus"])
    assert e.value.code == 2 and "--bogus" in capsys.readouterr().err
    args = build_parser().parse_args(["relabel", "reward=r", "--out", "o"])
    assert args.overrides == ["reward=r"] and args.out == "o"


def test_key_value_options_become_overrides():
    from raypipe.cli import option_overrides

    assert option_overrides(["--checkpoint", "F", "--input=x.parquet", "--tie-epsilon", "-1", "a=1"]) == [
        "reward=F",
        "input=x.parquet",
        "tie_epsilon=-1",
        "a=1",
    ]
    # a bare flag followed by an override does not swallow it; the job parser's own options stay options
    assert option_overrides(["--save-epsilon", "reward=X", "--out", "D", "--config", "c.yaml"]) == [
        "--save-epsilon",
        "reward=X",
        "--out",
        "D",
        "--config",
        "c.yaml",
    ]


def test_a_full_disk_is_one_line_wherever_it_is_met(tmp_path, monkeypatch, capsys):
    """`full_disk` finds ENOSPC / EDQUOT through an exception's chain and in a remote worker's error text (how Ray
    Train reports a worker's OSError); the CLI prints it as one `storage error` line, exit 1. Other errors are not
    taken for it."""
    import errno
    import logging

    from raypipe.data.location import LocationError, full_disk
    from raypipe.distributed.cluster import _DropFullDisk
    from raypipe.recipes import pairs

    assert isinstance(full_disk(OSError(errno.ENOSPC, "No space left on device"), "/out"), LocationError)
    assert isinstance(full_disk(OSError(errno.EDQUOT, "quota"), "/out"), LocationError)
    remote = RuntimeError("Training failed due to worker errors:\n... OSError: [Errno 28] No space left on device")
    assert "/out: no space left on the device" in str(full_disk(remote, "/out"))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert full_disk(outer, "/out") is not None
    assert full_disk(ValueError("bad value"), "/out") is None
    assert full_disk(OSError(errno.ENOENT, "No such file"), "/out") is None

    def fills_up(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "summary.json"))

    monkeypatch.setattr(pairs, "run", fills_up)
    assert main(["pairs", "--out", str(tmp_path / "o"), "data.manifest=m.parquet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("raypipe pairs: storage error: ")
    assert "summary.json: no space left on the device" in err

    keep = _DropFullDisk()  # the worker-side filter: the full-disk traceback goes, any other error stays
    record = logging.LogRecord("ray.train", logging.ERROR, "", 0, "Error in training function:\n%s", ("x",), None)
    assert keep.filter(record)
    record.args = ("OSError: [Errno 28] No space left on device",)
    assert not keep.filter(record)
