"""`data.inputs.real_videos` (the real videos of train-flow's LiFT / λ_sft and train-online's λ_sft terms): a
manifest's paths joined to its folder, clean SynthPref renders made once and reused, a manifest without path or
prompt refused."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import ConfigError, SynthConfig
from raypipe.data.inputs import real_videos


def test_a_manifest_s_paths_join_its_folder(tmp_path):
    pq.write_table(pa.table({"path": ["a.mp4", "sub/b.mp4"], "prompt": ["one", "two"]}), tmp_path / "m.parquet")
    table = real_videos(str(tmp_path / "m.parquet"), 0, tmp_path / "unused", None)
    assert table.column_names == ["uri", "prompt"]
    assert table.column("uri").to_pylist() == [str(tmp_path / "a.mp4"), str(tmp_path / "sub" / "b.mp4")]
    assert table.column("prompt").to_pylist() == ["one", "two"] and not (tmp_path / "unused").exists()
    pq.write_table(pa.table({"path": ["a.mp4"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=r"lacks columns \['prompt'\]"):
        real_videos(str(tmp_path / "bad.parquet"), 0, tmp_path, None)
    pq.write_table(pa.table({"path": ["a.mp4", "b.mp4"], "prompt": ["one", None]}), tmp_path / "null.parquet")
    with pytest.raises(ConfigError, match=r"without a path or a prompt: rows \[1\]"):
        real_videos(str(tmp_path / "null.parquet"), 0, tmp_path, None)


def test_synthpref_renders_are_made_once(tmp_path):
    synth = SynthConfig(seed=7, frames=5, size="16x16")
    first = real_videos(None, 3, tmp_path / "real", synth)
    assert first.num_rows == 3 and all((tmp_path / "real" / "videos").glob("*.mp4"))
    made = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "real" / "videos").iterdir()}
    again = real_videos(None, 3, tmp_path / "real", synth)  # a rerun reads them back, renders nothing
    assert again.equals(first)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "real" / "videos").iterdir()} == made
    assert sorted(made) == sorted(u.rsplit("/", 1)[-1] for u in first.column("uri").to_pylist())
