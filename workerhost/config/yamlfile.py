"""Reading ``workerhost.yaml`` safely: duplicate keys refused, alias bombs bounded, ``${VAR}``
expanded, and every value checked through a Section that names its dotted path in errors.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import yaml

from workerhost.config import converters as conv
from workerhost.config.converters import (
    show,
)
from workerhost.errors import ConfigError

# Values a file may hold once its YAML aliases are expanded: a large real file holds a few
# thousand; nested aliases can make a 1 KB file hold billions (an "alias bomb").
MAX_YAML_VALUES = 100_000
SECRET_KEYS = ("database.password", "host.console.secret_key")  # values no message may quote
# ... and these, whatever NAME is: the console's passwords.
SECRET_PATTERN = re.compile(r"host\.console\.users\.[^.]+\.password")
T = TypeVar("T")


class Section:
    """One mapping of the file: checks its keys and converts its values, naming their path."""

    def __init__(self, data: object, path: str, file: str, allowed: Sequence[str] | None,
                 required: Sequence[str] = ()) -> None:  # fmt: skip
        self.path, self.file = path, file
        if data is None:  # a section whose entries are all commented out
            data = {}
        if not isinstance(data, dict):
            raise self.error(f"expected a mapping, got {show(data)}")
        self.data: dict[str, object] = data
        for key in data:
            if not isinstance(key, str):
                raise self.error(f"keys must be strings, got {show(key)}; quote it")
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
        for key in required:
            if key not in data:
                raise self.error(f"missing required key {key!r}")

    def child(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def error(self, message: str, key: str | int | None = None) -> ConfigError:
        path = self.path if key is None else self.child(key)
        return ConfigError(message, file=self.file, path=path or None)

    def convert(self, key: str | int, convert: Callable[[object], T], value: object) -> T:
        try:
            return convert(value)
        except ValueError as exc:
            raise self.error(str(exc), key) from exc

    def get(self, key: str, convert: Callable[[object], T], default: T) -> T:
        return self.convert(key, convert, self.data[key]) if key in self.data else default

    def optional(self, key: str, convert: Callable[[object], T]) -> T | None:
        value = self.data.get(key)
        return None if value is None else self.convert(key, convert, value)

    def section(self, key: str, allowed: Sequence[str] | None,
                required: Sequence[str] = ()) -> Section:  # fmt: skip
        return Section(self.data.get(key), self.child(key), self.file, allowed, required)

    def values(
        self, key: str, convert: Callable[[object], T], *, single: bool = False
    ) -> tuple[T, ...]:
        """Convert a non-empty list of distinct values; with ``single`` a lone string will do."""
        value = self.data.get(key)
        if single and isinstance(value, str):
            return (self.convert(key, convert, value),)
        if not isinstance(value, list) or not value:
            raise self.error(f"expected a non-empty list, got {show(value)}", key)
        items = Section(None, self.child(key), self.file, None)
        converted: list[T] = []
        for index, item in enumerate(value):
            converted.append(items.convert(index, convert, item))
            if converted[-1] in converted[:-1]:
                raise items.error(f"{show(item)} is listed twice", index)
        return tuple(converted)


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of keeping the last one silently, and
    aliases that expand the document past MAX_YAML_VALUES before anything is built from it."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the SafeLoader itself says so below
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it past MAX_YAML_VALUES, or refer to their own
    container. PyYAML shares an aliased node, but everything that walks the values (merge
    keys, ``${VAR}`` substitution, the checks) walks every copy: a 1 KB file of nested
    aliases is billions of values. Sizes are counted once per node, so this is fast."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes whose children are being counted: the path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        children = _children(node)
        if counted:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"with its aliases expanded this holds more than "
                    f"{MAX_YAML_VALUES} values; write the values out, or use fewer aliases",
                    node.start_mark)  # fmt: skip
        elif id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to the mapping or list that holds it",
                node.start_mark)  # fmt: skip
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def at_line(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def expand(value: object, path: str, file: str, env: Mapping[str, str]) -> object:
    """Substitute environment variables in every string value below ``value``."""
    if isinstance(value, str):
        try:
            secret = path in SECRET_KEYS or SECRET_PATTERN.fullmatch(path) is not None
            return conv.expand_env(value, env, secret=secret)
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, path=path or None) from exc
    if isinstance(value, dict):
        return {
            key: expand(item, f"{path}.{key}" if path else str(key), file, env)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand(item, f"{path}[{i}]", file, env) for i, item in enumerate(value)]
    return value
