"""Manifest reading, validation messages (file, column, row) and label normalisation."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.data.manifest import ManifestError, label_counts, load_manifest, normalize_label, normalize_score


def _write(tmp_path, rows, name="m.parquet"):
    path = tmp_path / name
    if name.endswith(".csv"):
        cols = list(rows[0])
        lines = [",".join(cols)] + [",".join("" if r[c] is None else str(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _row(**kw):
    base = dict(path_A="a.mp4", path_B="b.mp4", prompt="a red circle moving left", VQ="A", MQ="B", TA="same")
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "value, expected",
    [
        ("A", 1),
        ("a", 1),
        (" B ", -1),
        ("same", 0),
        ("Tie", 0),
        ("TIE", 0),
        ("1", 1),
        ("-1", -1),
        ("0", 0),
        (1, 1),
        (-1, -1),
        (0, 0),
        (1.0, 1),
        (-1.0, -1),
        ("", None),
        ("C", None),
        ("2", None),
        (2, None),
        (0.5, None),
        (None, None),
        (float("nan"), None),
        (True, None),
    ],
)
def test_normalize_label(value, expected):
    assert normalize_label(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Good", 3.0),
        ("normal", 2.0),
        ("BAD", 1.0),
        ("4.5", 4.5),
        (2, 2.0),
        ("x", None),
        (None, None),
        (float("inf"), None),
    ],
)
def test_normalize_score(value, expected):
    assert normalize_score(value) == expected


def test_parquet_labels_and_masking(tmp_path):
    rows = [_row(), _row(VQ="B", MQ="tie", TA=None), _row(VQ="?", MQ="A", TA="-1")]
    m = load_manifest(_write(tmp_path, rows))
    t = m.table
    assert t.column("y_VQ").to_pylist() == [1, -1, None]
    assert t.column("y_MQ").to_pylist() == [-1, 0, 1]
    assert t.column("y_TA").to_pylist() == [0, None, -1]
    assert t.column("row_id").to_pylist() == [0, 1, 2]
    assert m.masked == {"VQ": 1, "MQ": 0, "TA": 1}
    assert label_counts(m)["VQ"] == {"A": 1, "B": 1, "tie": 0, "masked": 1}
    # relative paths resolve against the manifest's folder; the input columns are kept unchanged
    assert t.column("uri_A").to_pylist()[0] == str(tmp_path / "a.mp4")
    assert t.column("path_A").to_pylist()[0] == "a.mp4"


def test_csv_with_numeric_labels_and_metadata(tmp_path):
    rows = [_row(VQ=1, MQ=-1, TA=0, fps_A=8, num_frames_A=16), _row(VQ=0, MQ=1, TA=-1, fps_A="", num_frames_A=16)]
    m = load_manifest(_write(tmp_path, rows, "m.csv"))
    assert m.table.column("y_VQ").to_pylist() == [1, 0]
    assert m.table.column("y_TA").to_pylist() == [0, -1]
    assert m.table.column("fps_A").to_pylist() == [8.0, None]


def test_absolute_paths_and_video_root(tmp_path):
    rows = [_row(path_A="/data/x.mp4", path_B="s3://bucket/y.mp4")]
    m = load_manifest(_write(tmp_path, rows), video_root="/videos")
    assert m.table.column("uri_A").to_pylist() == ["/data/x.mp4"]
    assert m.table.column("uri_B").to_pylist() == ["s3://bucket/y.mp4"]
    m2 = load_manifest(_write(tmp_path, [_row()]), video_root="/videos")
    assert m2.table.column("uri_A").to_pylist() == ["/videos/a.mp4"]


def test_missing_required_column_is_named(tmp_path):
    rows = [{k: v for k, v in _row().items() if k != "path_B"}]
    path = _write(tmp_path, rows)
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert e.value.column == "path_B" and path in str(e.value) and "'path_B'" in str(e.value)


def test_null_path_names_the_row(tmp_path):
    path = _write(tmp_path, [_row(), _row(), _row(path_A=None)])
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert (e.value.column, e.value.row) == ("path_A", 2)
    assert "row 2" in str(e.value)


def test_every_label_unknown_fails(tmp_path):
    path = _write(tmp_path, [_row(MQ="good"), _row(MQ="bad")])
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert e.value.column == "MQ" and "'good'" in str(e.value)


def test_no_label_column_at_all(tmp_path):
    rows = [dict(path_A="a.mp4", path_B="b.mp4", prompt="p")]
    with pytest.raises(ManifestError, match="no label column"):
        load_manifest(_write(tmp_path, rows))
    m = load_manifest(_write(tmp_path, rows), require_labels=False)  # relabelling needs none
    assert len(m) == 1


def test_bad_number_names_column_and_row(tmp_path):
    path = _write(tmp_path, [_row(fps_A="8"), _row(fps_A="fast")], "m.csv")
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert (e.value.column, e.value.row) == ("fps_A", 1)


def test_wrong_type_path_column(tmp_path):
    path = _write(tmp_path, [_row(path_A=3)])
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert e.value.column == "path_A" and "strings" in str(e.value)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="unreadable"):
        load_manifest(str(bad))
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(str(tmp_path / "absent.parquet"))
    empty = _write(tmp_path, [_row()])
    pq.write_table(pa.Table.from_pylist([_row()]).slice(0, 0), empty)
    with pytest.raises(ManifestError, match="no rows"):
        load_manifest(empty)


def test_pointwise_manifest(tmp_path):
    rows = [
        dict(path="v.mp4", prompt="p", VQ="Good", MQ="3.5", TA="Bad"),
        dict(path="w.mp4", prompt="q", VQ="nope", MQ="1", TA="2"),
    ]
    m = load_manifest(_write(tmp_path, rows, "pw.csv"))
    assert m.kind == "pointwise"
    assert m.table.column("y_VQ").to_pylist() == [3.0, None]
    assert m.table.column("y_MQ").to_pylist() == [3.5, 1.0]
    assert m.table.column("uri").to_pylist()[0] == str(tmp_path / "v.mp4")


def test_manifest_through_a_filesystem_uri(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/mbucket/m.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist([_row()]), f)
    m = load_manifest("memory://mbucket/m.parquet")
    assert m.table.column("uri_A").to_pylist() == ["memory://mbucket/a.mp4"]
