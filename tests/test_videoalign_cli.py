"""The released VideoReward layout through the CLI and on Ray: relabel, eval-reward on a benchmark-format CSV,
export-reward, and the consumers' fail-fast checks (fixtures and the layout writer: tests/test_videoalign.py)."""
# ruff: noqa: F811 - the module fixtures `base` and `template_file` are imported from there and used as arguments

import json

import numpy as np
import pytest
import torch

from raypipe.config import ConfigError
from raypipe.reward import videoalign
from raypipe.reward.model import RewardModelConfig, VideoReward
from tests.test_videoalign import DIMS3, STATS, TEMPLATE, base, clips, template_file, write_released  # noqa: F401


def test_relabel_cli_on_a_released_folder_matches_direct_scoring(
    tmp_path, base, template_file, make_mp4, ray_local, monkeypatch
):
    """`raypipe relabel --checkpoint FOLDER --input POINTWISE --out OUT` with the template from the environment:
    raw scores equal the model's own scores of the qwen-sampled frames; norm_ / Overall follow inference_config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypipe.cli import main
    from raypipe.video.decode import decode_video

    folder = tmp_path / "VideoReward"
    write_released(folder, base)
    videos = [  # sizes and rates of real generators, scaled down: odd sizes, upscaled small ones, fps above 2
        make_mp4("a.mp4", t=20, h=56, w=84, fps=8.0),
        make_mp4("b.mp4", t=9, h=40, w=30, fps=24.0, seed=1),
        make_mp4("c.mp4", t=13, h=120, w=64, fps=5.0, seed=2),
    ]
    prompts = ["a red circle moving left", "a blue square", "a green triangle moving up"]
    pq.write_table(pa.table({"path": videos, "prompt": prompts}), tmp_path / "points.parquet")
    monkeypatch.setenv(videoalign.TEMPLATE_ENV, str(template_file))
    out = tmp_path / "out"
    rc = main(["relabel", "--checkpoint", str(folder), "--input", str(tmp_path / "points.parquet"), "--out", str(out),
               "progress=false"])  # fmt: skip
    assert rc == 0
    got = pq.read_table(out).to_pylist()
    model = VideoReward.from_pretrained(folder)
    sampling = videoalign.sampling(folder)
    clips_ = [decode_video(v, sampling).frames for v in videos]
    assert clips_[0].shape[0] == 4  # 20 frames at 8 fps: 5 -> 4 (Python's round), upscaled to min_pixels
    direct = model.score(clips_, prompts).numpy()
    by_path = {r["path"]: r for r in got}
    for i, v in enumerate(videos):
        row = by_path[v]
        assert row["error"] is None
        raw = [row[f"score_{d}"] for d in videoalign.DIMENSIONS]
        np.testing.assert_allclose(raw, direct[i], atol=1e-5)
        norm = [(raw[j] - STATS[f"{d}_mean"]) / STATS[f"{d}_std"] for j, d in enumerate(videoalign.DIMENSIONS)]
        np.testing.assert_allclose([row[f"norm_{d}"] for d in videoalign.DIMENSIONS], norm, atol=1e-9)
        assert row["Overall"] == pytest.approx(sum(norm))


def test_export_cli_and_conversion(tmp_path, base, template_file, capsys):
    from raypipe.cli import main

    cfg = RewardModelConfig(name_or_path=str(base), template="videoalign", positions="1d")
    model = VideoReward.build(cfg, template_file=str(template_file))
    model.save_pretrained(tmp_path / "ours", norm_stats={"mean": dict.fromkeys("VQ MQ TA".split(), 0.0),
                                                          "std": dict.fromkeys("VQ MQ TA".split(), 1.0)})  # fmt: skip
    args = ["--template-file", str(template_file), "--format", "videoalign"]
    assert main(["export-reward", "--checkpoint", str(tmp_path / "ours"), *args, "--out", str(tmp_path / "va")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["notes"] and "frame sampling" in summary["notes"][0]  # trained with our sampling: said so
    assert videoalign.is_videoalign(tmp_path / "va")
    # ...and back to our layout, from the released one
    back = ["--checkpoint", str(tmp_path / "va"), "--format", "raypipe", "--template-file", str(template_file)]
    assert main(["export-reward", *back, "--out", str(tmp_path / "back")]) == 0
    frames, prompts = clips(), ["a red circle", "a blue square"]
    again = VideoReward.from_pretrained(tmp_path / "back", template_file=str(template_file))
    torch.testing.assert_close(again.score(frames, prompts), model.score(frames, prompts), atol=1e-6, rtol=1e-6)
    assert main(["export-reward", "--checkpoint", str(tmp_path / "ours"), "--format", "onnx"]) == 2


def test_consumers_fail_fast_without_the_template(tmp_path, base, monkeypatch, capsys):
    """No template anywhere: relabel exits 2 with one line saying where to get it; the serve builder refuses
    before any replica starts; with template_file= the builder binds."""
    from raypipe.cli import main
    from raypipe.serve.apps import reward_app

    folder = tmp_path / "VideoReward"
    write_released(folder, base)
    monkeypatch.delenv(videoalign.TEMPLATE_ENV, raising=False)
    capsys.readouterr()
    assert main(["relabel", "--checkpoint", str(folder), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "template_file=PATH" in err[0] and "VideoAlign" in err[0]
    with pytest.raises(ConfigError, match="template_file=PATH"):
        reward_app({"reward": str(folder)})
    (tmp_path / "t.txt").write_text(TEMPLATE)
    assert reward_app({"reward": str(folder), "template_file": str(tmp_path / "t.txt")}) is not None


def test_eval_reward_on_a_benchmark_csv_with_the_released_folder(
    tmp_path, base, template_file, make_mp4, ray_local, capsys
):
    """`raypipe eval-reward --checkpoint RELEASED --manifest BENCH.csv video_root=DIR`: the leaderboard printed and
    written, margins equal to the model's own scores, Overall from the inference_config."""
    from raypipe.cli import main
    from raypipe.video.decode import decode_video

    folder = tmp_path / "VideoReward"
    write_released(folder, base)
    videos = [make_mp4(f"v{i}.mp4", t=12 + 2 * i, h=56, w=56 + 28 * (i % 2), fps=8.0, seed=i) for i in range(4)]
    names = [v.rsplit("/", 1)[1] for v in videos]
    rows = [  # path_A, path_B, A_model, B_model, prompt, labels VQ MQ TA Overall
        (names[0], names[1], "genA", "genB", "a red circle moving left", "A", "B", "same", "A"),
        (names[2], names[3], "genB", "genC", "a blue square", "B", "A", "A", "B"),
        (names[1], names[2], "genA", "genC", "a green triangle", "same", "same", "B", "same"),
    ]
    header = "path_A,path_B,A_model,B_model,prompt,fps_A,num_frames_A,fps_B,num_frames_B,VQ,MQ,TA,Overall\n"
    body = "".join(f"{a},{b},{ma},{mb},{p},8,0,8,0,{vq},{mq},{ta},{ov}\n" for a, b, ma, mb, p, vq, mq, ta, ov in rows)
    (tmp_path / "bench.csv").write_text(header + body)
    capsys.readouterr()
    argv = ["eval-reward", "--checkpoint", str(folder), "--manifest", str(tmp_path / "bench.csv"),
            f"video_root={tmp_path}", f"template_file={template_file}", "--out", str(tmp_path / "eval"),
            "progress=false"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "official w/ ties" in printed and "genC" in printed
    assert (tmp_path / "eval" / "leaderboard.md").read_text().strip() in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["Overall"]["by_model"]) == {"genA", "genB", "genC"}
    model = VideoReward.from_pretrained(folder, template_file=str(template_file))
    sampling = videoalign.sampling(folder)
    import pyarrow.parquet as pq

    got = pq.read_table(tmp_path / "eval" / "scores.parquet").to_pylist()
    for row, (a, b, *_rest) in zip(got, rows):
        prompt = row["prompt"]
        sa = model.score([decode_video(str(tmp_path / a), sampling).frames], [prompt])[0]
        sb = model.score([decode_video(str(tmp_path / b), sampling).frames], [prompt])[0]
        np.testing.assert_allclose([row[f"margin_{d}"] for d in DIMS3], (sa - sb).numpy(), atol=1e-5)
        norm = [(sa[j] - sb[j]).item() / STATS[f"{d}_std"] for j, d in enumerate(DIMS3)]
        assert row["margin_Overall"] == pytest.approx(sum(norm), abs=1e-5)
