"""Load YAML keeping the line of every key, so validation errors can point at `file:line`.

Sizes are bounded before anything is built from the text: the file's size, its nesting depth (read from the
parser's event stream, which is not recursive) and the size of the document once its aliases are expanded
(a "billion laughs" file of a few hundred bytes would otherwise grow to gigabytes in the line index and in
validation). A recursive alias is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

Path_ = tuple[Any, ...]

#: a study or fleet file is a few KB; these bounds are far above any real one
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32  # nested mappings/sequences, aliases expanded
MAX_NODES = 100_000  # scalars, mappings and sequences, aliases expanded


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


def _too_big(file: str, line: int | None, problem: str, fix: str) -> ConfigError:
    return ConfigError(problem, file=file, line=line, fix=fix)


def _check_events(text: str, file: str) -> None:
    """Nesting depth from the event stream (iterative), before the recursive composer sees the text."""
    depth = 0
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_big(file, event.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep",
                               "flatten the structure: a study or fleet file needs a few levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_expanded(root: yaml.Node, file: str) -> None:
    """Size and depth of the document with every alias expanded, without expanding it: each node's totals are
    computed once (iterative post-order over the node graph), so a shared node costs nothing to count again."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            line = node.start_mark.line + 1
            if size[key] > MAX_NODES:
                raise _too_big(file, line, f"the document expands to more than {MAX_NODES} values (through its "
                               "aliases `*name`)", "write the values out, or use fewer aliases")
            if depth[key] > MAX_DEPTH:
                raise _too_big(file, line, f"nested more than {MAX_DEPTH} levels deep once its aliases are "
                               "expanded", "use fewer aliases of aliases")
            continue
        if key in size:
            continue
        if key in active:
            raise _too_big(file, node.start_mark.line + 1, "an alias refers to the node that contains it (a "
                           "recursive alias)", "remove the alias `*name` inside its own anchor `&name`")
        active.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_yaml_text(text: str, file: str) -> YamlDoc:
    if len(text) > MAX_FILE_BYTES:
        raise _too_big(file, None, f"the file is {len(text)} characters, more than the {MAX_FILE_BYTES} allowed",
                       "pass the study or fleet file itself (a few KB)")
    try:
        _check_events(text, file)
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
        if node is not None:
            _check_expanded(node, file)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", file=file, line=line,
                          fix="correct the YAML syntax at that line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file, fix="correct the YAML syntax") from None
    except (RecursionError, MemoryError):  # bounded above; kept as the last line of defence
        raise _too_big(file, None, "the document is too deeply nested or too large to read",
                       "flatten the structure and remove aliases") from None
    lines: dict[Path_, int] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _index_lines(node, (), lines)
    doc = YamlDoc(data, lines, file)
    _check_strings(doc)
    return doc


def _check_strings(doc: YamlDoc) -> None:
    """No key or value may hold a NUL byte: none can reach a job (argv and environment are C strings)."""
    stack: list[tuple[Any, Path_]] = [(doc.data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    raise doc.error(path + (key,), "the key contains a NUL byte", fix="remove the \\0 from the key")
                stack.append((item, path + (key,)))
        elif isinstance(value, list):
            stack.extend((item, path + (i,)) for i, item in enumerate(value))
        elif isinstance(value, str) and "\x00" in value:
            raise doc.error(path, "the value contains a NUL byte, which no argv or environment can carry",
                            fix="remove the \\0 from the value")


def load_yaml_file(path: str | Path) -> YamlDoc:
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError("is a directory", file=str(path), fix="pass the YAML file itself")
        if path.exists() and not path.is_file():  # a FIFO or a device (/dev/zero) would block or never end
            raise ConfigError("is not a regular file", file=str(path), fix="pass the YAML file itself")
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise _too_big(str(path), None, f"the file is larger than the {MAX_FILE_BYTES} bytes allowed",
                           "pass the study or fleet file itself (a few KB)")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path), fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path), fix="pass a readable UTF-8 YAML file") from None
    return load_yaml_text(text, str(path))
