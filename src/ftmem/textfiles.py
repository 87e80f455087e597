"""Reading the user's JSON and YAML files within bounds.

Every file ftmem reads from the user (config.json, safetensors headers and indexes,
training configs, budgets, presets) comes through here, so that no input can hang the
reader (a FIFO), exhaust the stack (nesting thousands deep), expand without bound (YAML
aliases: a few hundred bytes can name millions of nodes) or reach Python's limit on
integer digits: each becomes one :class:`~ftmem.errors.ConfigError` sentence.

PyYAML is imported when a YAML text is first parsed, not with this module: the common
``ftmem estimate`` reads its presets' stored values instead (:mod:`ftmem.preset_values`).
"""

from __future__ import annotations

import stat
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmem.errors import ConfigError

if TYPE_CHECKING:
    import yaml

MAX_DEPTH = 64
"""Deepest nesting accepted: a training config nests five or six levels."""

MAX_NODES = 200_000
"""Most values a YAML document may expand to once its aliases are followed."""


@cache
def _loader() -> type:
    """PyYAML's safe loader: libyaml's when present (10x faster)."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def home_expanded(path: str) -> Path | None:
    """``path`` with a leading ``~`` or ``~user`` made the home folder, or None where
    that home is unknown: pathlib raises RuntimeError for ``~nobody/x``, and for ``~``
    itself under a uid without HOME or a password entry (a container's bare ``--user``)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return None


def given_path(text: str, what: str) -> Path:
    """A file path as the user typed it; an empty one is refused by name (``Path("")``
    is the current folder, which read_text would call "not a regular file")."""
    if not text.strip():
        raise ConfigError(f"the {what}'s path is empty; give the file.")
    return Path(text)


def read_text(path: Path, what: str, max_bytes: int) -> str:
    """The UTF-8 text of a regular file no larger than ``max_bytes``.

    ``what`` names the file in errors ("config.json", "budgets file"). A FIFO, device
    or folder is refused before it is opened (reading a FIFO would block forever).
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        broken = path.is_symlink()
        raise ConfigError(
            f"{path} is a broken link." if broken else f"No {what} at {path}: no such file."
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}.") from None
    except ValueError:  # a NUL byte (possible through the API, not from a shell)
        raise ConfigError(f"{str(path)!r} is not a path: it holds a NUL byte.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path} is not a regular file; give the {what} itself.")
    if info.st_size > max_bytes:
        raise ConfigError(
            f"{path} is {info.st_size:,} bytes, over the {max_bytes:,} a {what} can be."
        )
    try:
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}.") from None
    if len(raw) > max_bytes:
        raise ConfigError(f"{path} is over the {max_bytes:,} bytes a {what} can be.")
    try:
        # utf-8-sig: a byte-order mark, which Windows editors put at the start of a file,
        # is dropped (json.loads refuses it; PyYAML skips it)
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text.") from None


def _depth_ok(text: str, where: str) -> None:
    """Refuses JSON nested deeper than MAX_DEPTH, by counting brackets outside strings,
    before the recursive parser sees it."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where} nests deeper than {MAX_DEPTH} levels.")
        elif ch in "]}":
            depth -= 1


def parse_json(text: str, where: str) -> Any:
    """JSON text as Python values; ``where`` names the source in errors."""
    import json  # (not for an estimate from presets: ftmem.cli.fast)

    if text.count("[") + text.count("{") > MAX_DEPTH:  # cheap test first: most files are flat
        _depth_ok(text, where)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    except (ValueError, RecursionError):  # an integer beyond Python's 4,300-digit limit
        raise ConfigError(f"{where} holds a number too long to read.") from None


def _check_events(text: str, where: str) -> None:
    """Depth from the event stream (which, unlike the composer, does not recurse)."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=_loader()):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise ConfigError(f"{where}, line {line}: nests deeper than {MAX_DEPTH} levels.")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded_size(root: yaml.Node, where: str) -> None:
    """Counts the values the document expands to (aliases repeat their node), refusing
    more than MAX_NODES: the 'billion laughs' of YAML."""
    import yaml

    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done or not children:
            total = 1 + sum(sizes.get(id(c), 0) for c in children)
            if total > MAX_NODES:
                raise ConfigError(
                    f"{where} expands to over {MAX_NODES:,} values through its aliases."
                )
            sizes[id(node)] = total
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def yaml_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    """A YAML syntax error as one sentence with its line."""
    mark = getattr(exc, "problem_mark", None)
    line = f", line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "not valid YAML"
    return ConfigError(f"{where}{line}: {problem}.")


def compose_yaml(text: str, where: str) -> yaml.Node | None:
    """The YAML node tree (with line marks), bounded in depth and expansion."""
    import yaml

    try:
        _check_events(text, where)
        root = yaml.compose(text, Loader=_loader())
    except yaml.YAMLError as exc:
        raise yaml_error(exc, where) from None
    if root is not None:
        _expanded_size(root, where)
    return root


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as Python values (safe types only), bounded like :func:`compose_yaml`."""
    import yaml

    root = compose_yaml(text, where)
    if root is None:
        return None
    loader = _loader()("")
    try:
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise yaml_error(exc, where) from None
    except (ValueError, OverflowError, RecursionError):
        raise ConfigError(f"{where} holds a number too long to read.") from None
    finally:
        loader.dispose()
