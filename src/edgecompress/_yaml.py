"""Bounded YAML for recipes: a safe loader that refuses alias bombs and oversized documents.

``yaml.safe_load`` builds shared objects for aliases, so a "billion laughs" document loads
quickly and then hangs whatever walks it (validation, JSON dumps). This loader counts aliases
and the size of the document with every alias expanded, and refuses past small limits that no
real recipe comes near.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 100_000


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with a cap on aliases and on the expanded node count."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.aliases_seen = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                raise ConfigError(f"the recipe uses more than {MAX_ALIASES} YAML aliases; "
                                  f"refused (an alias bomb?). Write the values out")
        return super().compose_node(parent, index)


def _expanded_size(node: yaml.Node, memo: dict[int, int], depth: int = 0) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if depth > 100:
        raise ConfigError("the recipe nests deeper than 100 levels; refused")
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, depth + 1) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, depth + 1) + _expanded_size(v, memo, depth + 1)
                    for k, v in node.value)
    memo[key] = size
    if size > MAX_EXPANDED_NODES:
        raise ConfigError(f"the recipe expands to more than {MAX_EXPANDED_NODES:,} values "
                          f"(aliases multiply); refused (an alias bomb?)")
    return size


def load_bounded(text: str) -> Any:
    """Parse one YAML document within the limits above (ConfigError past them)."""
    if len(text.encode()) > MAX_RECIPE_BYTES:
        raise ConfigError(f"the recipe is {len(text.encode()):,} bytes; a recipe is at most "
                          f"{MAX_RECIPE_BYTES:,}")
    loader = BoundedSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {})
        return loader.construct_document(node)
    finally:
        loader.dispose()
