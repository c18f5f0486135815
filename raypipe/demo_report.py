"""The demo's report: `demo-out/report.md` with the tables, and the pictures it links (all beside it).

Everything is read back from what the stages wrote (summaries, metrics.json, relabel parts, generated mp4s), so the
report can be rebuilt from a finished demo folder: `python -m raypipe.demo_report demo-out`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

DIMS = ("VQ", "MQ", "TA")


def _f(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def reward_histograms(relabel_out: Path, path: Path, dims=DIMS) -> Path | None:
    """Per dimension: the reward model's scores of the relabelled videos, split by the ground-truth label of
    the pair (the A video of pairs labelled A-better vs B-better, i.e. preferred vs rejected)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from raypipe.data.manifest import normalize_label

    parts = sorted(relabel_out.glob("part-*.parquet"))
    if not parts:
        return None
    table = pq.read_table(parts[0].parent)
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.2))
    for ax, dim in zip(np.atleast_1d(axes), dims):
        if f"score_A_{dim}" not in table.column_names:
            continue
        labels = [normalize_label(v) for v in table.column(dim).to_pylist()]
        a = table.column(f"score_A_{dim}").to_pylist()
        b = table.column(f"score_B_{dim}").to_pylist()
        won, lost = [], []
        for y, sa, sb in zip(labels, a, b):
            if sa is None or sb is None or y not in (1, -1):
                continue
            won.append(sa if y == 1 else sb)
            lost.append(sb if y == 1 else sa)
        if won:
            bins = np.histogram_bin_edges(won + lost, bins=16)
            ax.hist(won, bins=bins, alpha=0.6, label="preferred (ground truth)")
            ax.hist(lost, bins=bins, alpha=0.6, label="rejected")
        ax.set_title(f"{dim} reward")
        ax.set_xlabel("score")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def side_by_side_gif(columns: dict[str, Path], path: Path, rows: int = 4, scale: int = 4, fps: float = 8.0):
    """One row per prompt, one column per run (folders of NNNN.mp4 with the same prompts and seeds)."""
    from PIL import Image

    from raypipe.video.decode import read_all_frames

    grid_rows = []
    for i in range(rows):
        cells = []
        for folder in columns.values():
            f = folder / f"{i:04d}.mp4"
            frames = read_all_frames(str(f)) if f.exists() else None
            if frames is None or not isinstance(frames, np.ndarray):
                return None
            cells.append(frames)
        t = min(c.shape[0] for c in cells)
        sep = np.full_like(cells[0][:t, :, :2], 255)
        row = cells[0][:t]
        for c in cells[1:]:
            row = np.concatenate([row, sep, c[:t]], axis=2)
        grid_rows.append(row)
    if not grid_rows:
        return None
    t = min(r.shape[0] for r in grid_rows)
    video = np.concatenate([r[:t] for r in grid_rows], axis=1)
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


STAGES = (
    ("synth_s", "1 SynthPref"),
    ("pairs_s", "2 Ray Data pairs"),
    ("reward_s", "3 train VideoReward"),
    ("eval_s", "4 evaluate"),
    ("relabel_s", "5 relabel"),
    ("generator_s", "6a pretrain generator"),
    ("sample_pairs_s", "6 pairs from generated samples"),
    ("flow_s", "7 Flow-DPO + baselines"),
    ("nrg_s", "8 latent reward + Flow-NRG"),
    ("lift_s", "9 LiFT: critic, critic relabel, fine-tuning"),
)


def write_report(out: Path, report: dict | None = None) -> Path:
    """Write OUT/report.md (+ reward_histograms.png, nrg_side_by_side.gif) from a finished demo folder."""
    out = Path(out)
    report = report if report is not None else json.loads((out / "demo_summary.json").read_text())
    lines = [
        "# raypipe demo report",
        "",
        "Everything below ran on a local Ray with the tiny models (`make demo`); the timings are this machine's.",
        "",
    ]
    lines += _stages(report)
    lines += _data(report)
    lines += _reward(report, out)
    lines += _relabel(report, out)
    lines += _flow(report, out)
    lines += _nrg(report, out)
    lines += _lift(report, out)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rel(path: Path, out: Path) -> str:
    """A link relative to the report."""
    return Path(path).relative_to(out).as_posix()


def _stages(report: dict) -> list[str]:
    lines = ["## Stages", "", "| stage | seconds |", "|---|---|"]
    for key, name in STAGES:
        if key in report:
            lines.append(f"| {name} | {report[key]:.0f} |")
    if "total_s" in report:
        lines.append(f"| **total** | **{report['total_s']:.0f}** |")
    return lines


def _data(report: dict) -> list[str]:
    s = report.get("pairs", {})
    lines = [
        "",
        "## Data",
        "",
        f"SynthPref: {s.get('rows')} pairs, {s.get('decoded')} decoded, {s.get('error_rows')} error rows, "
        f"{s.get('frames_decoded')} frames at {s.get('pairs_per_s')} pairs/s.",
        "",
        "| dim | A better | B better | tie | masked |",
        "|---|---|---|---|---|",
    ]
    for dim, c in (s.get("labels") or {}).items():
        lines.append(f"| {dim} | {c['A']} | {c['B']} | {c['tie']} | {c['masked']} |")
    return lines


def _reward(report: dict, out: Path) -> list[str]:
    ev = report.get("eval", {})
    lines = [
        "",
        "## VideoReward (held-out pairs)",
        "",
        f"{report.get('reward', {}).get('steps')} steps of BTT training (Ray Train + DeepSpeed, 2 workers).",
        "",
        "| dim | accuracy, ties excluded | accuracy, ties included | ε* | pairs | ties |",
        "|---|---|---|---|---|---|",
    ]
    for dim in [*DIMS, "Overall"]:
        m = ev.get(dim)
        if isinstance(m, dict):
            lines.append(
                f"| {dim} | {_f(m.get('acc_without_ties'))} | {_f(m.get('acc_with_ties'))} | "
                f"{_f(m.get('epsilon'))} | {m.get('n')} | {m.get('n_ties')} |"
            )
    for img, caption in (
        ("reward/learning_curve.png", "learning curve"),
        ("eval/accuracy_vs_epsilon.png", "ties-included accuracy against ε"),
    ):
        if (out / img).exists():
            lines += ["", f"![{caption}]({img})"]
    return lines


def _relabel(report: dict, out: Path) -> list[str]:
    agreement = report.get("relabel_agreement", {})
    hist = reward_histograms(out / "relabel", out / "reward_histograms.png")
    lines = [
        "",
        "## Relabel",
        "",
        f"{report.get('relabel', {}).get('rows')} pairs relabelled (resumable Ray Data batch scoring). "
        "Model label = ground-truth label (A / B / same, with the validation ε*): "
        + ", ".join(f"{d} {_f(v)}" for d, v in agreement.items())
        + ".",
    ]
    if hist:
        lines += ["", f"![reward histograms]({_rel(hist, out)})"]
    return lines


def _flow(report: dict, out: Path) -> list[str]:
    flows = report.get("flow", {})
    sp = report.get("sample_pairs", {})
    if not flows:
        return []
    lines = [
        "",
        "## Aligning the generator",
        "",
        f"{sp.get('pairs')} preference pairs from the generator's own samples ({sp.get('samples')} samples, "
        f"best vs worst per prompt by the reward model, targets {report.get('pair_weights')}). "
        "Win rate of each LoRA-aligned generator over the base, judged by the reward model / the oracle "
        f"({next(iter(flows.values()))['eval'].get('prompts')} held-out prompts, ties count ½):",
        "",
        "| algorithm | steps | " + " | ".join(DIMS) + " | reward hacking |",
        "|---|---|" + "---|" * len(DIMS) + "---|",
    ]
    for algo, r in flows.items():
        e = r["eval"]
        cells = [f"{_f(e['reward_win_rate'].get(d), 2)} / {_f(e['oracle_win_rate'].get(d), 2)}" for d in DIMS]
        lines.append(
            f"| {algo} | {r['train']['steps']} | " + " | ".join(cells) + f" | "
            f"{', '.join(e.get('reward_hacking') or []) or '–'} |"
        )
    for algo in flows:
        gif = out / "flow" / algo / "eval" / "grid.gif"
        if gif.exists():
            lines += ["", f"{algo}: base (left) | aligned (right)", "", f"![{algo} samples]({_rel(gif, out)})"]
    return lines


def _lift(report: dict, out: Path) -> list[str]:
    lift = report.get("lift")
    if not lift:
        return []
    samples, val, ev = lift["samples"], lift["critic"]["val"], lift["eval"]
    lines = [
        "",
        "## LiFT: a critic's ratings and reasons drive the fine-tuning",
        "",
        (
            f"Critic ({lift['critic']['steps']} steps): held-out rating accuracy "
            + ", ".join(f"{d} {_f(val.get(d, {}).get('accuracy'), 2)}" for d in DIMS)
            + " (chance 0.33)."
            if val
            else f"Critic: {lift['critic'].get('checkpoint')}."
        )
        + " It rated the stage-6 samples "
        f"({samples['videos']} videos, {samples['error_rows']} error rows); mean LiFT weight "
        f"{_f(samples['mean_lift_weight'], 3)}.",
        "",
        "| dim | critic's ratings (Good/Normal/Bad) | oracle's ratings | agreement |",
        "|---|---|---|---|",
    ]
    for d in DIMS:
        c, o = samples["ratings"][d], samples["oracle_ratings"][d]
        counts = lambda x: "/".join(str(x.get(k, 0)) for k in ("Good", "Normal", "Bad"))  # noqa: E731
        lines.append(f"| {d} | {counts(c)} | {counts(o)} | {_f(samples['agreement_with_oracle'][d], 2)} |")
    lines += ["", "What it said (first samples):", ""]
    for e in samples["examples"]:
        lines.append(f"- *{e['prompt']}* — " + "; ".join(f"{d}: {e[d]}" for d in DIMS))
    t = lift["train"]
    lines += [
        "",
        f"LiFT fine-tuning: {t['steps']} steps on {t['rows']} videos ({t['row_counts']}). Win rate over the base, "
        f"reward model / oracle ({ev.get('prompts')} prompts): "
        + ", ".join(f"{d} {_f(ev['reward_win_rate'].get(d), 2)} / {_f(ev['oracle_win_rate'].get(d), 2)}" for d in DIMS),
    ]
    gif = out / "lift" / "finetune" / "eval" / "grid.gif"
    if gif.exists():
        lines += ["", "base (left) | LiFT (right)", "", f"![LiFT samples]({_rel(gif, out)})"]
    return lines


def _nrg(report: dict, out: Path) -> list[str]:
    nrg = report.get("nrg", {})
    if not nrg:
        return []
    buckets = nrg.get("buckets", [])
    lines = [
        "",
        "## Flow-NRG: reward guidance at sampling time",
        "",
        "Latent reward model (the generator's first blocks + one head per dimension) held-out accuracy "
        f"({nrg.get('val_pairs')} pairs) by noise level t:",
        "",
        "| dim | " + " | ".join(buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for dim, acc in (nrg.get("accuracy_by_t") or {}).items():
        lines.append(f"| {dim} | " + " | ".join(_f(acc.get(b), 2) for b in buckets) + " |")
    if (out / "latent_reward" / "accuracy_by_t.png").exists():
        lines += ["", "![latent reward accuracy by t](latent_reward/accuracy_by_t.png)"]
    lines += _nrg_runs(nrg)
    columns = {name: out / "nrg" / name / "videos" for name in nrg.get("runs", {})}
    gif = side_by_side_gif(columns, out / "nrg_side_by_side.gif", rows=min(4, nrg.get("prompts", 4)))
    if gif:
        lines += [
            "",
            " | ".join(columns) + " (left to right), one prompt per row",
            "",
            f"![guided vs unguided]({_rel(gif, out)})",
        ]
    return lines


def _nrg_runs(nrg: dict) -> list[str]:
    """The guided-vs-unguided table: mean latent reward, oracle win rate and attributes per run."""
    lines = [
        "",
        f"Guided vs unguided samples ({nrg.get('prompts')} prompts, the same noise for every run, "
        f"λ = {nrg.get('strength')}): mean latent reward per dimension, the oracle's win rate over the "
        "unguided samples per dimension, and the share of samples with the prompt's colour / direction.",
        "",
        "| run | weights | "
        + " | ".join(f"latent {d}" for d in DIMS)
        + " | "
        + " | ".join(f"oracle win {d}" for d in DIMS)
        + " | colour / direction |",
        "|---|---|" + "---|" * (2 * len(DIMS)) + "---|",
    ]
    for name, r in nrg.get("runs", {}).items():
        wins = r.get("oracle_win_rate") or {}
        lines.append(
            f"| {name} | {r.get('weights') or '–'} | "
            + " | ".join(_f(r["mean_latent"].get(d)) for d in DIMS)
            + " | "
            + " | ".join(_f(wins.get(d), 2) for d in DIMS)
            + f" | {_f(r['oracle'].get('color'), 2)} / {_f(r['oracle'].get('direction'), 2)} |"
        )
    return lines


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")))


def print_summary(report: dict, cfg) -> None:
    """The demo's closing summary on stdout (`cfg`: the DemoConfig)."""
    s = report["pairs"]
    print("\n=== summary ===")
    print(f"pairs: {s['rows']}  decoded: {s['decoded']}  error rows: {s['error_rows']} {s['errors']}")
    print(f"frames decoded: {s['frames_decoded']}  throughput: {s['pairs_per_s']} pairs/s")
    print("labels (A/B/tie/masked):")
    for dim, c in s["labels"].items():
        print(f"  {dim}: {c['A']}/{c['B']}/{c['tie']}/{c['masked']}")
    print("reward model (held-out, ties excluded / included):")
    for dim in cfg.dims:
        m = report["eval"].get(dim) or {}
        print(f"  {dim}: {m.get('acc_without_ties', float('nan')):.3f} / {m.get('acc_with_ties', float('nan')):.3f}")
    print("relabel: model label = ground-truth label (A/B/same, ε* from validation):")
    for dim, share in report["relabel_agreement"].items():
        print(f"  {dim}: {share:.3f}")
    print(
        f"generator alignment on {report['sample_pairs']['pairs']} generated pairs (targets {cfg.pair_weights}), "
        f"{cfg.eval_prompts} prompts, win rate over the base — reward model / oracle:"
    )
    for algo, r in report["flow"].items():
        ev = r["eval"]
        print(
            f"  {algo:>4}: "
            + "  ".join(
                f"{d} {ev['reward_win_rate'].get(d, float('nan')):.2f} / "
                f"{ev['oracle_win_rate'].get(d, float('nan')):.2f}"
                for d in ("VQ", "MQ", "TA")
            )
        )
        if ev["reward_hacking"]:
            print(f"        reward hacking: {ev['reward_hacking']}")
    nrg = report["nrg"]
    print(f"Flow-NRG (λ = {cfg.guidance_strength}), mean latent reward VQ/MQ/TA and oracle win rate over unguided:")
    for folder, r in nrg["runs"].items():
        print(
            f"  {r['name']:>24}: "
            + "/".join(f"{r['mean_latent'][d]:.2f}" for d in ("VQ", "MQ", "TA"))
            + (
                ""
                if folder == "unguided"
                else "   oracle " + "/".join(f"{r['oracle_win_rate'][d]:.2f}" for d in ("VQ", "MQ", "TA"))
            )
        )
    lift = report.get("lift")
    if lift:
        s, ev = lift["samples"], lift["eval"]
        print("LiFT: critic ratings of the generated samples vs the oracle's (agreement), then win rate over the base:")
        print("  agreement " + "  ".join(f"{d} {s['agreement_with_oracle'][d]:.2f}" for d in ("VQ", "MQ", "TA")))
        rates = [
            (d, ev["reward_win_rate"].get(d, float("nan")), ev["oracle_win_rate"].get(d, float("nan"))) for d in DIMS
        ]
        print("  LiFT " + "  ".join(f"{d} {r:.2f} / {o:.2f}" for d, r, o in rates))
