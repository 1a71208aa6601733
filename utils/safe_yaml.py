"""YAML configs that may come from the internet: no resolver runs, and a few hundred bytes cannot
grow into gigabytes.

OmegaConf evaluates resolver interpolations (`${oc.env:NAME}` reads an environment variable,
`${oc.decode:...}` parses text, any registered `${name:...}` calls code) whenever a value is read,
so a downloaded YAML could copy a secret into log.txt, every checkpoint, TensorBoard and wandb.
Plain references (`${variables.bottleneck_dim}`, relative `${.key}`) only copy other values of the
same config, but `b: ${a}${a}`, `c: ${b}${b}`, ... doubles at each level. Here:
- `refuse_resolvers(cfg, source)`: every `${name:...}` is refused, in files and in `key=value`
  overrides alike (on the command line the shell already expands `$NAME`);
- `check_interpolations(cfg, source)`: the plain references are followed on the raw values,
  without resolving anything, and refused when a chain is more than `MAX_DEPTH` references deep,
  cyclic, nested (`${a.${b}}`), or resolves to more than `MAX_VALUE_CHARS` characters in one value
  or `MAX_TOTAL_CHARS` in the whole config;
- `load_yaml(path)`: `OmegaConf.load` after a size cap (`MAX_YAML_BYTES`) and a YAML alias check
  (`&a [*b, *b]` anchors also double at each level, and OmegaConf copies every alias), then both
  checks above. Errors are one-line ValueErrors naming the file and key.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

MAX_YAML_BYTES = 4 << 20         # the authors' configs are a few kilobytes
MAX_YAML_NODES = 200_000         # nodes after expanding YAML aliases
MAX_DEPTH = 16                   # references followed from one value
MAX_VALUE_CHARS = 1 << 20        # characters one value resolves to
MAX_TOTAL_CHARS = 8 << 20        # characters the whole config resolves to

Path = Tuple[str, ...]
Config = Union[DictConfig, ListConfig]


def _dotted(path: Path) -> str:
    return ".".join(path) or "<root>"


def _raw_nodes(cfg: Config) -> Dict[Path, Any]:
    """Every node of `cfg` (containers included) by key path, values unresolved."""
    nodes: Dict[Path, Any] = {}
    stack: List[Tuple[Path, Any]] = [((), OmegaConf.to_container(cfg, resolve=False))]
    while stack:
        path, value = stack.pop()
        nodes[path] = value
        if isinstance(value, dict):
            stack.extend((path + (str(k),), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((path + (str(i),), v) for i, v in enumerate(value))
    return nodes


def _interpolations(text: str, where: str) -> List[Tuple[str, Optional[str]]]:
    """(text, referenced key or None for a resolver) of every top-level `${...}` in `text`."""
    from omegaconf import grammar_parser

    try:
        tree = grammar_parser.parse(text)
    except Exception as err:  # GrammarParseError: OmegaConf would fail on reading it too
        raise ValueError(f"{where}: not a valid interpolation: {text[:80]!r} ({err})") from None
    found: List[Tuple[str, Optional[str]]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if type(node).__name__ != "InterpolationContext":
            stack.extend(getattr(node, "children", None) or [])
            continue
        inner = node.getChild(0)
        if type(inner).__name__ == "InterpolationResolverContext":
            found.append((node.getText(), None))
        elif "${" in node.getText()[2:]:
            raise ValueError(f"{where}: nested interpolation {node.getText()[:80]!r} is not supported")
        else:
            found.append((node.getText(), node.getText()[2:-1].strip()))
    return found


def refuse_resolvers(cfg: Config, source: str) -> None:
    """One-line ValueError for the first `${name:...}` resolver interpolation in `cfg`."""
    for path, value in sorted(_raw_nodes(cfg).items()):
        if isinstance(value, str) and "${" in value:
            where = f"{source}: '{_dotted(path)}'"
            for text, key in _interpolations(value, where):
                if key is None:
                    raise ValueError(f"{where} = {text[:80]!r}: resolver interpolations (${{name:...}}) are "
                                     "refused in configs (they run code, e.g. oc.env copies an environment "
                                     "variable into every log and checkpoint); write the value itself, or "
                                     "let your shell expand $NAME in a key=value override")


def _target(path: Path, key: str) -> Path:
    """The absolute path of reference `key` (`a.b`, `a[0]`, relative `.x`, `..x`) made at `path`."""
    dots = len(key) - len(key.lstrip("."))
    parts = tuple(re.findall(r"[^.\[\]]+", key[dots:]))
    if dots == 0:
        return parts
    base = path[:-1]                              # the container holding the value
    return base[: max(len(base) - (dots - 1), 0)] + parts


def check_interpolations(cfg: Config, source: str) -> None:
    """Refuse resolvers and any plain reference chain that is too deep, cyclic or too large
    (see the module docstring); nothing is resolved."""
    refuse_resolvers(cfg, source)
    nodes = _raw_nodes(cfg)
    done: Dict[Path, Tuple[int, int]] = {}       # path -> (characters, reference depth)
    active: set = set()

    def too_deep(origin: Path) -> ValueError:
        return ValueError(f"{source}: '{_dotted(origin)}': interpolation chain deeper than {MAX_DEPTH}")

    def measure(path: Path, hops: int, origin: Path) -> Tuple[int, int]:
        """(characters, reference depth) of `path`, reached `hops` references from `origin`."""
        if path in done:
            size, depth = done[path]
        else:
            if hops > MAX_DEPTH:
                raise too_deep(origin)
            if path in active:
                raise ValueError(f"{source}: '{_dotted(path)}': cyclic interpolation")
            active.add(path)
            value = nodes.get(path, "")
            if isinstance(value, (dict, list)):
                keys = value if isinstance(value, dict) else range(len(value))
                children = [measure(path + (str(k),), hops, origin if hops else path + (str(k),))
                            for k in keys]
                size = sum(s for s, _ in children) + len(children)
                depth = max((d for _, d in children), default=0)
            elif isinstance(value, str) and "${" in value:
                refs = _interpolations(value, f"{source}: '{_dotted(path)}'")
                size, depth = len(value) - sum(len(text) for text, _ in refs), 0
                for _, key in refs:
                    s, d = measure(_target(path, key), hops + 1, origin)
                    size, depth = size + s, max(depth, d + 1)
            else:
                size, depth = len(str(value)), 0
            active.discard(path)
            done[path] = (size, depth)
        if hops + depth > MAX_DEPTH:
            raise too_deep(origin)
        if size > (MAX_TOTAL_CHARS if path == () else MAX_VALUE_CHARS):
            raise ValueError(f"{source}: '{_dotted(path)}' resolves to {size} characters through "
                             f"interpolations (at most {MAX_TOTAL_CHARS if path == () else MAX_VALUE_CHARS})")
        return size, depth

    measure((), 0, ())


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _expanded_nodes(root: yaml.Node) -> float:
    """Node count of a composed YAML document with every alias expanded (memoised per node, so a
    chain of doubling anchors is counted, not walked); infinite for a recursive alias."""
    counts: Dict[int, float] = {}
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:                                  # iterative post-order
        node, children_done = stack.pop()
        if children_done:
            counts[id(node)] = 1 + sum(counts.get(id(c), float("inf")) for c in _children(node))
        elif id(node) not in counts:
            counts.setdefault(id(node), float("inf"))   # in progress: reaching it again is a cycle
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in counts)
    return counts[id(root)]


def load_yaml(path: Union[str, os.PathLike]) -> Config:
    """`OmegaConf.load(path)` for a file that may come from anywhere (module docstring). YAML
    syntax errors propagate as `yaml.YAMLError`, as from OmegaConf.load."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than a YAML config may have ({MAX_YAML_BYTES})")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    document = yaml.compose(text, Loader=yaml.SafeLoader)
    if document is not None and _expanded_nodes(document) > MAX_YAML_NODES:
        raise ValueError(f"{path}: YAML aliases expand to more than {MAX_YAML_NODES} nodes")
    cfg = OmegaConf.load(path)
    check_interpolations(cfg, path)
    return cfg
