"""YAML as ctxrl reads it: PyYAML's safe loader (no object construction) with YAML 1.2's
numbers and no dates, refusing a key given twice in one mapping."""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers (``1e-3`` is a float, not a string; ``010``
    is ten, not octal eight; ``1:30`` is text, not ninety) and no dates (``2026-12-05`` stays
    text), that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _construct_yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 integer: decimal (digits grouped by ``_`` allowed: ``1_000_000``), ``0o``
    octal or ``0x`` hexadecimal."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    return int(text, 0) if text.startswith(("0o", "0x")) else int(text, 10)


# YAML 1.1's numbers (octal by a leading zero, base 60 with colons) and timestamps out, YAML
# 1.2's numbers in
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, pattern)
        for tag, pattern in resolvers
        if tag
        not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_yaml12_int)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, name: str | None = None) -> Any:
    """Parse YAML safely (no object construction), with YAML 1.2 number rules; ``name`` (the
    file's path) is where a syntax error's marks say the text is (else "<unicode string>")."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.MarkedYAMLError as exc:
        for mark in (exc.context_mark, exc.problem_mark):
            if mark is not None and name is not None:
                mark.name = name
        raise
