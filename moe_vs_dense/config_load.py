"""YAML -> a validated `Config`: `base:` chains, `!replace`, duplicate keys, data paths
relative to the file that names them, `--set` overrides, and errors that name file, line and
key path (the schema itself is moe_vs_dense/config.py)."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from moe_vs_dense.config import Config
from moe_vs_dense.errors import UserError

Where = dict[tuple[str, ...], str]  # key path -> where its value was set ("file:line", "--set")


class Replace(dict):
    """A mapping tagged `!replace`: it replaces the inherited mapping instead of merging."""


class _Loader(yaml.SafeLoader):
    """The safe YAML loader plus the `!replace` tag."""


_Loader.add_constructor(
    "!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True)))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (and the chain of files its `base:` names), apply `key.path=value`
    overrides and validate; a `files` source that names a missing file is an error too. Raise
    UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    raw, where = read_with_bases(path, (path.resolve(),))
    apply_overrides(raw, where, overrides or [])
    cfg = validate(Config, raw, source=str(path), where=where)
    check_files(cfg, where, str(path))
    return cfg


def read_yaml(path: Path) -> tuple[Any, Where]:
    """One YAML file's content and the `file:line` of every key in it. Invalid YAML and a key
    given twice in one mapping (YAML would keep the last silently) are errors naming the lines."""
    text = path.read_text()
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return {}, {}
        _check_duplicates(root, str(path))
        raw = loader.construct_document(root)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    finally:
        loader.dispose()
    return raw, key_lines(root, str(path))


def _check_duplicates(node: yaml.Node, source: str, at: tuple[str, ...] = ()) -> None:
    """A key set twice in one mapping names both lines (the YAML library keeps the last).
    `source` is a file name, or "--set" for a value on the command line (no lines there)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for k, v in node.value:
            here, line = (*at, str(k.value)), k.start_mark.line + 1
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                if (k.tag, k.value) in seen:
                    place, first = (source, "in the same value") if source == "--set" else (
                        f"{source}:{line}", f"at line {seen[k.tag, k.value]}")
                    raise UserError(f"{place}: {'.'.join(here)}: duplicate key, also set {first}; "
                                    "YAML would silently keep only the last, so merge the two "
                                    "into one")
                seen[k.tag, k.value] = line
            _check_duplicates(v, source, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_duplicates(v, source, (*at, str(i)))


def read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict, Where]:
    """A config file's mapping with its `base:` chain merged in, and where each key was set.
    Data paths are made absolute against the folder of the file that names them."""
    raw, where = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys")
    resolve_paths(raw, path.parent)
    if "base" not in raw:
        return _plain(raw), where
    base, at = raw.pop("base"), where.pop(("base",))
    if not isinstance(base, str):
        raise UserError(f"{at}: base: must be the name of a YAML file (got {base!r})")
    base_path = path.parent / base
    if base_path.resolve() in chain:
        cycle = " -> ".join(p.name for p in (*chain, base_path.resolve()))
        raise UserError(f"{at}: base: {base} makes a cycle ({cycle})")
    if not base_path.is_file():
        raise UserError(f"{at}: base: file not found: {base_path}")
    inherited, inherited_where = read_with_bases(base_path, (*chain, base_path.resolve()))
    merged, replaced = _merge(inherited, raw)
    _forget(inherited_where, replaced)
    return merged, {**inherited_where, **where}


def resolve_paths(raw: Any, folder: Path) -> None:
    """Make the data paths of a raw config absolute against `folder` (the folder of the file
    that names them, as `base:` is; the working directory for `--set`): `data.dir`, the
    `paths` of every mixture stream, and an `hf` stream's `name` where it is a folder there."""
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        return

    def absolute(p: Any) -> Any:
        return os.path.abspath(folder / Path(p).expanduser()) if isinstance(p, str) else p

    if "dir" in data:
        data["dir"] = absolute(data["dir"])
    for stream in (data.get("mixture") or {}).values() if isinstance(data.get("mixture"), dict) else []:
        if not isinstance(stream, dict):
            continue
        if isinstance(stream.get("paths"), list):
            stream["paths"] = [absolute(p) for p in stream["paths"]]
        name = stream.get("name")
        if stream.get("source") == "hf" and isinstance(name, str) and (folder / name).is_dir():
            stream["name"] = absolute(name)


def check_files(cfg: Config, where: Where, source: str) -> None:
    """Every path of a `files` stream names a file; else an error naming where it was set."""
    for key, s in cfg.data.mixture.items():
        if s.source != "files":
            continue
        for i, p in enumerate(s.paths):
            if not Path(p).is_file():
                loc = ["data", "mixture", key, "paths", str(i)]
                what = "is a directory, not a file" if Path(p).is_dir() else "file not found"
                raise UserError(f"{_place(where, loc, source)}: {'.'.join(loc)}: {what}: {p}")


def apply_overrides(raw: dict, where: Where, overrides: list[str]) -> None:
    """Apply `--set key.path=value` items to `raw`, marking in `where` every key they set or
    create as set by `--set` (so an error in a new mapping blames the command line). Relative
    data paths they give are taken against the working directory."""
    for item in overrides:
        key, value = parse_override(item)
        parts = tuple(key.split("."))
        node: Any = raw
        for n, part in enumerate(parts[:-1], 1):
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                where[parts[:n]] = "--set"
        set_path(raw, key, value)
        _forget(where, [parts])
        where[parts] = "--set"
    if overrides:
        resolve_paths(raw, Path.cwd())


def _merge(base: dict, child: dict, at: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, ...]]]:
    """`child` over `base`, key by key: mappings merge; anything else (a scalar, a list, a
    mapping tagged `!replace`) replaces. Also returns the key paths replaced whole."""
    out, replaced = dict(base), []
    for key, value in child.items():
        here = (*at, str(key))
        if isinstance(value, dict) and not isinstance(value, Replace) and \
                isinstance(base.get(key), dict):
            out[key], inner = _merge(base[key], value, here)
            replaced += inner
        else:
            out[key] = _plain(value)
            replaced.append(here)
    return out, replaced


def _plain(value: Any) -> Any:
    """Plain dicts all the way down (no `Replace` left for validation)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _forget(where: Where, replaced: list[tuple[str, ...]]) -> None:
    """Drop the places of values that were replaced whole (and everything below them)."""
    for key in [k for k in where if any(k[: len(r)] == r for r in replaced)]:
        del where[key]


def key_lines(node: yaml.Node, source: str, at: tuple[str, ...] = ()) -> Where:
    """`file:line` of every key (and list item) in a composed YAML document."""
    out: Where = {}
    if isinstance(node, yaml.MappingNode):
        children = [((*at, str(k.value)), k, v) for k, v in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = [((*at, str(i)), v, v) for i, v in enumerate(node.value)]
    else:
        return out
    for here, mark_node, value in children:
        out[here] = f"{source}:{mark_node.start_mark.line + 1}"
        out.update(key_lines(value, source, here))
    return out


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected key.path=value")
    loader = _Loader(value)
    try:
        node = loader.get_single_node()
        if node is None:
            return key.strip(), None
        _check_duplicates(node, "--set", tuple(key.strip().split(".")))
        return key.strip(), _plain(loader.construct_document(node))
    except yaml.YAMLError:
        return key.strip(), value
    finally:
        loader.dispose()


def set_path(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def validate(
    cls: type[BaseModel], raw: Any, source: str = "<config>", where: Where | None = None
) -> Any:
    """Validate `raw` as `cls`; on failure raise one UserError listing every problem, each
    with the place its value was set (`where`: key path -> "file:line" or "--set")."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        lines = [_format_error(cls, err, source, where or {}) for err in e.errors()]
        raise UserError("invalid config:\n  " + "\n  ".join(lines)) from None


def _format_error(cls, err: dict, source: str, where: Where) -> str:
    loc = [str(p) for p in err["loc"]]
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        # validators prefix their message with the sub-key they are about
        head, sep, rest = msg.partition(": ")
        if sep and " " not in head:
            loc, msg = loc + head.split("."), rest
        got = None
    elif kind == "extra_forbidden":
        allowed = _allowed_keys(cls, loc[:-1])
        msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        got = None
    elif kind == "missing":
        msg, got = "required key is missing", None
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        msg = f"must be {op} {bound}"
    elif kind == "literal_error":
        msg = f"must be one of {ctx.get('expected')}"
    shown = "" if got is None or isinstance(got, dict) else f" (got {got!r})"
    return f"{_place(where, loc, source)}: {'.'.join(loc)}: {msg}{shown}"


def _place(where: Where, loc: list[str], source: str) -> str:
    """Where the deepest key on the path `loc` was set; the top file when none was."""
    for n in range(len(loc), 0, -1):
        if tuple(loc[:n]) in where:
            return where[tuple(loc[:n])]
    return source


def _allowed_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the model found at key path `loc` under `cls` (best effort)."""
    ann: Any = cls
    for part in loc:
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part)
            if field is None:
                return []
            ann = field.annotation
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
        else:
            return []
    ann = _unwrap(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _unwrap(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann
