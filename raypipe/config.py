"""Typed job configs: dataclasses loaded from YAML, overridden with `key=value`, saved with every output.

    cfg = load_config(PairsJobConfig, "configs/pairs_tiny.yaml", ["data.sampling.fps=4", "out=/tmp/x"])
    save_config(cfg, out_dir)          # writes out_dir/config.yaml

Values in overrides are parsed as YAML scalars (`4` is an int, `[VQ,MQ]` a list, `null` None) and then
checked against the field's declared type, so a typo or a wrong type fails at once, naming the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml


def repo_path(path: str | os.PathLike) -> Path:
    """`path` as given when it exists (or is absolute), else relative to the repository root: presets and
    assets (assets/tiny-generator, assets/tiny-qwen2vl) resolve from any working directory."""
    p = Path(path)
    return p.resolve() if p.is_absolute() or p.exists() else Path(__file__).resolve().parent.parent / p


T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the job's config class."""


# The `--help` epilog of every config-driven command (the override syntax `load_config` parses).
EPILOG_OVERRIDES = (
    "Overrides: section.key=value (YAML values), e.g. data.sampling.fps=4 data.rows_per_block=8; "
    "--key VALUE is the same as key=VALUE (--checkpoint = reward)"
)


# How frames are counted, picked and resized (SamplingConfig.convention): ours, or qwen-vl-utils 0.0.8's.
SAMPLING_CONVENTIONS = ("raypipe", "qwen")


@dataclasses.dataclass
class SamplingConfig:
    """What the reward model sees of a video (SPEC §2.3)."""

    fps: float = 2.0  # frames sampled per second of video
    min_frames: int = 4  # fewer sampled frames than this: the video is `too_short`
    max_frames: int = 64  # cap on sampled frames
    min_pixels: int = 56 * 56  # per frame, after resizing
    max_pixels: int = 448 * 448  # pixel budget per frame (larger frames are resized down)
    max_source_pixels: int = 4096 * 4096  # larger decoded frames are refused as `too_large`
    max_source_frames: int = 1_000_000  # a header claiming more frames is refused as `too_large`
    all_frames: bool = False  # every frame (min_frames still applies), not the fps plan: the generator's view
    # "raypipe" (SPEC §2.3) or "qwen" (qwen-vl-utils 0.0.8, as the released VideoReward was trained: banker's
    # rounding, torch bicubic-antialias resize; set max_frames=768, min_pixels=128*28*28 for released checkpoints)
    convention: str = "raypipe"

    def __post_init__(self):
        if self.convention not in SAMPLING_CONVENTIONS:
            raise ConfigError(
                f"sampling.convention: unknown value {self.convention!r}; one of {list(SAMPLING_CONVENTIONS)}"
            )


@dataclasses.dataclass
class DataConfig:
    """A preference manifest and how its videos are decoded."""

    manifest: str | None = None  # path or URI (.parquet or .csv); None: a job may synthesise one
    video_root: str | None = None  # relative video paths resolve against this (default: the manifest's folder)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    rows_per_block: int = 4  # pairs per Ray Data block (the unit of parallel decoding)
    decode_cpus: float = 1.0  # CPUs reserved per decode task


@dataclasses.dataclass
class ClipConfig:
    """How the generator sees a video: `frames` evenly spaced over the clip, resized to height x width."""

    frames: int = 9  # frames per clip (Wan: 1 + 4k for real sizes; tiny VAE: odd)
    height: int = 56  # clip height in pixels
    width: int = 56  # clip width in pixels


@dataclasses.dataclass
class SynthConfig:
    """SynthPref generation (DESIGN.md). Defaults are the reference difficulty."""

    pairs: int = 256  # number of preference pairs
    seed: int = 0  # random seed; same seed, same data
    frames: int = 16  # frames per video
    size: str = "56x56"  # HxW
    fps: float = 8.0  # video frame rate
    label_noise: float = 0.0  # probability that a label is replaced by one of the other two
    tie_margin: float = 0.16  # VQ/MQ tie when |level_A - level_B| < tie_margin (~30% ties)
    ta_tie_share: float | None = None  # TA tie probability; None: the natural ~30% of independent draws
    # ratings.parquet (LiFT-style Good/Normal/Bad + reasons per video): probability a rating is replaced by another
    rating_noise: float = 0.0
    # image-to-video: both videos of a pair start on one image (the prompt's object, clean) and share its position;
    # the labels judge the rest
    i2v: bool = False


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not fit {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def build_config(cls: type[T], data: dict) -> T:
    """A config dataclass from a plain dict (e.g. one `to_dict` wrote), types checked like `load_config`."""
    return _build(cls, data)


def parse_overrides(overrides: list[str]) -> dict:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}` with YAML-typed values."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. data.sampling.fps=4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {key}: {raw!r} is not a YAML value ({_yaml_problem(e)}); quote a mapping "
                f"for the shell, e.g. '{key}={{VQ: 1}}'"
            ) from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part}")
        node[parts[-1]] = value
    return tree


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _section_type(cls, key: str):
    """The dataclass type of field `key` of dataclass `cls` (a config section), else None."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    try:
        hint = typing.get_type_hints(cls).get(key)
    except Exception:  # noqa: BLE001 - unresolvable annotations: treat as a plain value
        return None
    options = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    return next((a for a in options if isinstance(a, type) and dataclasses.is_dataclass(a)), None)


def _merge(base: dict, update: dict, cls=None) -> dict:
    """`update` over `base`: config sections (dataclass fields) merge key by key; any other value, dict-valued
    fields included (e.g. data.weights), is replaced whole — `data.weights={VQ: 1}` means only VQ."""
    out = dict(base)
    for k, v in update.items():
        section = _section_type(cls, k)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and (section is not None or cls is None):
            out[k] = _merge(out[k], v, section)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, updated by the YAML file at `path`, then by `overrides`."""
    data = to_dict(cls())
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = _merge(data, loaded, cls)
    if overrides:
        data = _merge(data, parse_overrides(overrides), cls)
    return _build(cls, data)


def config_yaml(cfg: Any) -> str:
    """The resolved config as the YAML text `save_config` writes (for outputs that are not local folders)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config next to an output, so every result says how it was made."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(config_yaml(cfg))
    return path


# --- help text, from the dataclasses themselves ----------------------------------------------------------------
def field_comments(cls) -> dict[str, str]:
    """{field: its comment} from the source of a config dataclass and its bases: the comment at the end of the
    field's line, else the comment lines right above it (the one source of truth for `--help`)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        out.update({k: v for k, v in _comments_in(source, {f.name for f in dataclasses.fields(klass)}).items() if v})
    return out


def _comments_in(source: str, names: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    above: list[str] = []
    line: list[tokenize.TokenInfo] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and not line:
            above.append(tok.string.lstrip("#").strip())
        elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            names_at = [t for t in line if t.type not in (tokenize.INDENT, tokenize.DEDENT)]
            if (
                len(names_at) >= 2
                and names_at[0].string in names
                and names_at[1].string == ":"
                and names_at[0].start[1] > 0
            ):
                trailing = [t.string.lstrip("#").strip() for t in line if t.type == tokenize.COMMENT]
                found[names_at[0].string] = " ".join(trailing or above)
            line, above = [], []
        elif tok.type == tokenize.NL:
            if line:
                continue
            if not above or tok.line.strip() == "":
                above = [] if tok.line.strip() == "" else above
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            line.append(tok)
    return found


def config_keys(cls, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) of every leaf field of a config dataclass, sections expanded."""
    rows = []
    comments = field_comments(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(defaults, f.name)
        section = _section_type(cls, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(config_keys(type(value), f"{key}."))
        elif value is None and section is not None:  # an optional section: unset, or these keys when set
            rows.append((key, value, comments.get(f.name, "")))
            rows.extend(config_keys(section, f"{key}."))
        else:
            rows.append((key, value, comments.get(f.name, "")))
    return rows


def config_help(cls) -> str:
    """`key = default  # meaning`, one line per key, for `raypipe JOB --help`."""
    lines = []
    for key, default, meaning in config_keys(cls):
        text = f"  {key} = {json.dumps(default, default=str)}"
        lines.append(f"{text:<44}  # {meaning}" if meaning else text)
    return "\n".join(lines)
