"""Strict YAML to plain data, remembering the line of every value and key.

PyYAML composes the text into nodes (which carry marks) and this module turns the nodes into
dicts, lists, strings, ints, bools and None. It is stricter than ``yaml.safe_load``: a duplicate
key, a merge key (``<<``), an explicit or unknown tag, a YAML 1.1 boolean other than
true/false (``yes``, ``no``, ``on``...), a recursive alias or a document that expands beyond a
bound is an error, never a guess. Timestamps stay strings; the loader parses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["MAX_BYTES", "MAX_NODES", "Parsed", "YamlProblem", "parse"]

MAX_BYTES = 1 << 20  # bytes: no policy file is anywhere near a mebibyte
MAX_NODES = 100_000  # values after alias expansion (a "billion laughs" bound)

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_DECIMAL = re.compile(r"[-+]?[0-9]+")
# libyaml when PyYAML was built with it (ten times faster); the marks are the same.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlProblem(Exception):
    """A problem at a line (1-based; 0 for the whole text)."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


@dataclass
class Parsed:
    """The data, and the line of each value (``lines``) and mapping key (``key_lines``) by path."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    key_lines: dict[Path, int] = field(default_factory=dict)

    def line(self, path: Path) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return 0
            path = path[:-1]

    def key_line(self, path: Path) -> int:
        return self.key_lines.get(path) or self.line(path)


def parse(text: str) -> Parsed:
    """Parse one YAML document; raises :class:`YamlProblem`."""
    if len(text) > MAX_BYTES:
        raise YamlProblem(0, f"the file is larger than {MAX_BYTES} bytes")
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = exc.problem or exc.context or "invalid YAML"
        raise YamlProblem(line, f"not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(0, f"not valid YAML: {exc}") from None
    if node is None:
        raise YamlProblem(0, "the file is empty")
    parsed = Parsed(None)
    parsed.data = _Walker(parsed).value(node, ())
    return parsed


class _Walker:
    def __init__(self, parsed: Parsed) -> None:
        self.parsed = parsed
        self.count = 0
        self.active: set[int] = set()

    def value(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlProblem(node.start_mark.line + 1, "the document expands to too many values")
        line = node.start_mark.line + 1
        self.parsed.lines.setdefault(path, line)
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node, line)
        if id(node) in self.active:
            raise YamlProblem(line, "a recursive alias")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    raise YamlProblem(line, f"unsupported YAML tag {node.tag!r}")
                return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path, line)
            raise YamlProblem(line, "unsupported YAML node")
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: Path, line: int) -> dict[str, Any]:
        if node.tag != _MAP:
            raise YamlProblem(line, f"unsupported YAML tag {node.tag!r}")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem(key_line, "merge keys (<<) are not supported; write the keys out")
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(key_line, "a key must be plain text")
            key = _scalar(key_node, key_line)
            if not isinstance(key, str):
                raise YamlProblem(key_line, f"the key {key_node.value!r} must be text; quote it")
            if key in out:
                raise YamlProblem(key_line, f"duplicate key {key!r}")
            self.parsed.key_lines[(*path, key)] = key_line
            out[key] = self.value(value_node, (*path, key))
        return out


def _scalar(node: yaml.ScalarNode, line: int) -> Any:
    tag, value = node.tag, node.value
    if tag in (_STR, _TIMESTAMP):
        return value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise YamlProblem(line, f"ambiguous value {value!r}: quote it, or write true or false")
    if tag == _INT:
        if _DECIMAL.fullmatch(value.replace("_", "")) and "_" not in value:
            return int(value)
        raise YamlProblem(line, f"write the number {value!r} in plain decimal digits")
    if tag == _FLOAT:
        try:
            return float(value)
        except ValueError:
            raise YamlProblem(line, f"unsupported number {value!r}") from None
    raise YamlProblem(line, f"unsupported YAML tag {tag!r}")
