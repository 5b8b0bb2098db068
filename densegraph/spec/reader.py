"""Reading a spec's YAML safely: composed nodes with their locations, merge keys and aliases expanded under
the limits, ``extends`` chains resolved."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .._io import read_regular
from ..errors import Loc, SpecError
from .model import LIMITS


@dataclass
class _Val:
    """A YAML value with the location of the value and (inside a mapping) of its key."""

    value: Any  # scalar, list[_Val] or dict[str, _Val]
    loc: Loc
    key_loc: Loc | None = None

    @property
    def where(self) -> Loc:
        return self.loc


def _mark_loc(file: str, mark: Any) -> Loc:
    if mark is None:
        return Loc(file)
    return Loc(file, mark.line + 1, mark.column + 1)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Converter:
    """Located values from a composed YAML node graph, with PyYAML's constructors only for scalars.

    Aliases are expanded here, not by PyYAML, and every value reached (an aliased subtree once per use, every
    pair a merge key brings in) counts against ``LIMITS["yaml_nodes"]``: that count is what bounds the
    "billion laughs" and merge-key expansions, whatever the PyYAML version does about them.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0
        self.constructor = yaml.constructor.SafeConstructor()
        # id(mapping node) -> its pairs with "<<" merged in (merged first, written last); None while in progress
        self.flattened: dict[int, list[tuple[yaml.Node, yaml.Node]] | None] = {}

    def _charge(self, where: yaml.Node, depth: int) -> None:
        """Count one value reached at ``depth``; ``where`` is what the error points at when over the limits."""
        self.count += 1
        if self.count > LIMITS["yaml_nodes"] or depth > LIMITS["yaml_depth"]:
            raise SpecError(
                "the YAML document is too large or too deeply nested",
                loc=_mark_loc(self.file, where.start_mark),
                hint="a spec is a short document; check for runaway anchors/aliases",
            )

    def _merge_error(self, found: yaml.Node, expected: str) -> SpecError:
        return SpecError(
            f"invalid YAML: expected {expected} for merging, but found {found.id}",
            loc=_mark_loc(self.file, found.start_mark),
            hint="check the indentation and quoting",
        )

    def _pairs(self, node: yaml.MappingNode, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """``node``'s pairs with merge keys (``<<: *base`` or ``<<: [*a, *b]``) resolved as YAML 1.1 says:
        a key written in the mapping wins over a merged one, an earlier merged mapping over a later one."""
        key = id(node)
        if key in self.flattened:
            done = self.flattened[key]
            if done is None:
                raise SpecError(
                    "a merge key ('<<') includes the mapping it is part of",
                    loc=_mark_loc(self.file, node.start_mark),
                    hint="merge a separate anchored mapping",
                )
            return done
        self.flattened[key] = None
        merged: dict[object, tuple[yaml.Node, yaml.Node]] = {}
        written: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                written.append((key_node, value_node))
                continue
            if isinstance(value_node, yaml.MappingNode):
                sources = [value_node]
            elif isinstance(value_node, yaml.SequenceNode):
                sources = value_node.value
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise self._merge_error(source, "a mapping")
            else:
                raise self._merge_error(value_node, "a mapping or list of mappings")
            for source in sources:  # charged at the merge key: an alias carries no mark of where it is used
                self._charge(key_node, depth + 1)
                _check_tag(self.file, source)  # a merged mapping is read through here only
                for pair in self._pairs(source, depth + 1):
                    self._charge(key_node, depth + 1)
                    name = pair[0].value if isinstance(pair[0], yaml.ScalarNode) else id(pair[0])
                    merged.setdefault((pair[0].tag, name), pair)
        names = {(k.tag, k.value) for k, _ in written if isinstance(k, yaml.ScalarNode)}
        pairs = [pair for name, pair in merged.items() if name not in names] + written
        self.flattened[key] = pairs
        return pairs

    def convert(self, node: yaml.Node, depth: int = 0) -> _Val:
        self._charge(node, depth)
        loc = _mark_loc(self.file, node.start_mark)
        _check_tag(self.file, node)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, _Val] = {}
            for key_node, value_node in self._pairs(node, depth):
                key_loc = _mark_loc(self.file, key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                    raise SpecError(
                        f"mapping keys must be plain names, got {key_node.value!r}"
                        if isinstance(key_node, yaml.ScalarNode)
                        else "mapping keys must be plain names",
                        loc=key_loc,
                        hint="write keys such as growth_rate, blocks, stem",
                    )
                key = key_node.value
                if key in out:  # merged pairs never repeat a name, nor one written here: two written keys
                    first = out[key].key_loc
                    raise SpecError(
                        f"duplicate key '{key}'",
                        loc=key_loc,
                        hint=f"'{key}' is already set at line {first.line if first else '?'}; keep one",
                    )
                val = self.convert(value_node, depth + 1)
                val.key_loc = key_loc
                out[key] = val
            return _Val(out, loc)
        if isinstance(node, yaml.SequenceNode):
            return _Val([self.convert(item, depth + 1) for item in node.value], loc)
        return _Val(self._scalar(node, loc), loc)

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            return self.constructor.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(self.file, exc) from None
        # PyYAML's scalar constructors assume a well-formed value once a tag is explicit: "!!bool maybe" is a
        # KeyError, "!!int ''" an IndexError, "!!timestamp x" an AttributeError
        except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as exc:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            text = str(node.value)
            if tag == "!!int" and sum(ch.isdigit() for ch in text) > 100:
                raise SpecError(
                    f"an integer of {sum(ch.isdigit() for ch in text)} digits",
                    loc=loc,
                    hint="is this a typo? numbers in a spec are small",
                ) from None
            shown = text if len(text) <= 40 else text[:37] + "..."
            detail = f" ({exc})" if isinstance(exc, ValueError) and len(str(exc)) <= 80 else ""
            raise SpecError(
                f"cannot read {shown!r} as {tag}{detail}",
                loc=loc,
                hint=f"write a valid {tag} value, or quote it to keep it as text",
            ) from None


_COLLECTION_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}
_SCALAR_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp", "binary")
}


def _check_tag(file: str, node: yaml.Node) -> None:
    # yaml.compose keeps explicit tags on collections (``!!python/object/apply:os.system [...]``) and nothing
    # constructs them, so they are refused here rather than read as plain lists; a collection tag on a scalar
    # (``!!map x``) or a tag that builds something a spec has no use for (``!!set``, ``!!omap``) likewise.
    allowed = _COLLECTION_TAGS.get(type(node))
    ok = node.tag == allowed if allowed else node.tag in _SCALAR_TAGS
    if not ok:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise SpecError(
            f"unsupported YAML tag {tag}",
            loc=_mark_loc(file, node.start_mark),
            hint="only plain YAML (safe tags) is accepted",
        )


def _yaml_error(file: str, exc: yaml.MarkedYAMLError) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if (
        exc.context and exc.problem
    ):  # PyYAML's contexts read "while scanning …" (after) or "expected …" (before)
        problem = (
            f"{problem} {exc.context}" if exc.context.startswith("while") else f"{exc.context}, {problem}"
        )
        start = exc.context_mark
        if (
            exc.context.startswith("while")
            and start is not None
            and mark is not None
            and start.line != mark.line
        ):
            problem += f" that starts at {start.line + 1}:{start.column + 1}"  # e.g. the unclosed bracket
    return SpecError(
        f"invalid YAML: {problem}", loc=_mark_loc(file, mark), hint="check the indentation and quoting"
    )


def _reader_error(file: str, text: str, exc: yaml.reader.ReaderError) -> SpecError:
    before = text[: exc.position]
    line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
    code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
    return SpecError(
        f"invalid YAML: unacceptable character #x{code:04x}: {exc.reason}",
        loc=Loc(file, line, col),
        hint="remove the control character",
    )


class _TooDeep(yaml.MarkedYAMLError):
    pass


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses deep nesting before Python's recursion limit does.

    PyYAML's scanner and parser keep explicit stacks, but its composer recurses once per nesting level, so 3000
    ``[`` in a row would end in a RecursionError; here the document is refused at ``LIMITS["yaml_depth"]``.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > LIMITS["yaml_depth"]:
                raise _TooDeep(problem="too deeply nested", problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self.depth -= 1


def _compose(text: str) -> yaml.Node | None:
    loader = _SpecLoader(text)
    try:
        return loader.get_single_node()  # type: ignore[no-any-return]
    finally:
        loader.dispose()


def _parse_text(text: str, file: str) -> _Val:
    try:
        node = _compose(text)
    except _TooDeep as exc:
        raise SpecError(
            "the YAML document is too large or too deeply nested",
            loc=_mark_loc(file, exc.problem_mark),
            hint=f"a spec nests at most {LIMITS['yaml_depth']} levels",
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(file, exc) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(file, text, exc) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {' '.join(str(exc).split())}", loc=Loc(file)) from None
    if node is None:
        raise SpecError(
            "the spec is empty", loc=Loc(file, 1, 1), hint="a spec is a mapping with at least 'blocks'"
        )
    root = _Converter(file).convert(node)
    if not isinstance(root.value, dict):
        raise SpecError(
            f"the spec must be a mapping of keys, got a {_type_name(root.value)}",
            loc=root.loc,
            hint="start with 'name:', 'growth_rate:', 'blocks:' …",
        )
    return root


def _read_file(path: Path, display: str, extends: _Val | None = None) -> str:
    """The text of a spec file; reading errors point at the file, or at the ``extends`` line naming it."""
    try:
        data = read_regular(
            path,
            limit=LIMITS["file_bytes"],
            what="spec file",
            error=SpecError,
            loc=Loc(display) if extends is None else extends.loc,
            missing_hint="check the path to the spec",
            too_large_hint="a spec is a short document",
        )
    except SpecError as exc:
        if extends is None:
            raise
        named = extends.value if len(extends.value) <= 60 else extends.value[:57] + "..."
        raise SpecError(f"'extends' {named!r}: {exc.message}", loc=exc.loc, hint=exc.hint) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        col = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
        raise SpecError(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
            loc=Loc(display, line, col),
            hint="save the spec as UTF-8",
        ) from None


# ---------------------------------------------------------------------------------------------------------
# extends: merge a base under the overrides


def _merge(base: _Val, over: _Val) -> _Val:
    if isinstance(base.value, dict) and isinstance(over.value, dict):
        merged = dict(base.value)
        for key, val in over.value.items():
            merged[key] = _merge(base.value[key], val) if key in base.value else val
        return _Val(merged, over.loc, over.key_loc)
    return over


def _load_tree(path: Path, display: str, chain: tuple[str, ...], ref: _Val | None = None) -> _Val:
    text = _read_file(path, display, ref)
    root = _parse_text(text, display)
    extends = root.value.pop("extends", None)
    if extends is None:
        return root
    if not isinstance(extends.value, str) or not extends.value.strip():
        raise SpecError(
            "'extends' must be a relative path to another spec", loc=extends.loc, hint="extends: base.yaml"
        )
    if "\0" in extends.value:
        raise SpecError("'extends' contains a NUL byte", loc=extends.loc, hint="extends: base.yaml")
    if os.path.isabs(extends.value):
        raise SpecError(
            f"'extends' must be a path relative to this spec, got the absolute path {extends.value!r}",
            loc=extends.loc,
            hint="write it relative to the folder of this file",
        )
    base_path = path.parent / extends.value
    key = os.path.realpath(base_path)  # a symlink loop is left unresolved here and refused when read
    if key in chain:
        raise SpecError(
            f"'extends' cycle: {' -> '.join(Path(c).name for c in (*chain, key))}",
            loc=extends.loc,
            hint="a spec cannot extend itself, directly or through others",
        )
    if len(chain) >= LIMITS["extends_depth"]:
        raise SpecError("'extends' chain is too deep", loc=extends.loc)
    try:
        os.lstat(base_path)
    except FileNotFoundError:
        raise SpecError(
            f"'extends' names a file that does not exist: {extends.value}",
            loc=extends.loc,
            hint=f"looked for {key}",
        ) from None
    except OSError:
        pass  # reading it names the reason (a name too long, a folder that is a file, no permission)
    base_display = os.path.relpath(key) if not os.path.isabs(display) else key
    base = _load_tree(Path(key), base_display, (*chain, key), extends)
    merged = _merge(base, root)
    if "name" not in root.value:  # a derived spec is named after its own file unless it says otherwise
        merged.value.pop("name", None)
    return merged


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return type(value).__name__
