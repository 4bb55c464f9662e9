"""Load YAML keeping the line of every key, so validation errors can point at `file:line`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

Path_ = tuple[Any, ...]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class YamlDoc:
    """A parsed YAML document plus a map from key paths to 1-based line numbers."""

    def __init__(self, data: Any, lines: dict[Path_, int], file: str) -> None:
        self.data, self.lines, self.file = data, lines, file

    def line_of(self, path: Path_) -> int | None:
        """Line of the deepest existing prefix of `path` (a missing field points at its parent)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def error(self, path: Path_, message: str, fix: str | None = None) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line_of(path), field=dotted(path), fix=fix)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _index_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            lines[key_path] = key_node.start_mark.line + 1
            _index_lines(value_node, key_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = path + (index,)
            lines[item_path] = item.start_mark.line + 1
            _index_lines(item, item_path, lines)


def load_yaml_text(text: str, file: str) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", file=file, line=line,
                          fix="correct the YAML syntax at that line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file, fix="correct the YAML syntax") from None
    lines: dict[Path_, int] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _index_lines(node, (), lines)
    return YamlDoc(data, lines, file)


def load_yaml_file(path: str | Path) -> YamlDoc:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path), fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path), fix="pass a readable UTF-8 YAML file") from None
    return load_yaml_text(text, str(path))
