"""YAML from a task archive (task.yaml, docker-compose.yaml), read as hostile input.

`yaml.safe_load` builds no objects but follows aliases: a few hundred bytes of nested `&a [*b, *b]`
expand into billions of nodes for whoever walks the result (the "billion laughs"). Here the node
graph is composed first, its expanded size counted once per distinct node (linear in the
document), and only a document under `MAX_NODES` is turned into Python values. Anchors and merge
keys (`<<: *common`), common in compose files, keep working.
"""

from typing import Any

import yaml

MAX_NODES = 100_000
# libyaml's parser when PyYAML has it (its wheels do): the same documents, several times faster.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(ValueError):
    """The document is not YAML, or expands past `MAX_NODES`."""


def load(text: str, *, max_nodes: int = MAX_NODES) -> Any:
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise YamlError(f"could not parse YAML: {exc}") from None
    except RecursionError:
        raise YamlError("could not parse YAML: nested too deeply") from None
    if root is None:
        return None
    if expanded_size(root) > max_nodes:
        raise YamlError(f"the document expands to more than {max_nodes} nodes (aliases)")
    try:
        return _LOADER(text).construct_document(root)
    except yaml.YAMLError as exc:
        raise YamlError(f"could not read YAML: {exc}") from None
    except RecursionError:
        raise YamlError("could not read YAML: nested too deeply") from None


def expanded_size(root: yaml.Node) -> int:
    """The number of nodes the document has once every alias is expanded, counting each distinct
    node once (an iterative post-order walk: no recursion limit, no exponential re-walks)."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            continue
        if id(node) in entered:
            raise YamlError("the document refers to itself (a recursive alias)")
        entered.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
