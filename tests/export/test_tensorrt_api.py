"""Every TensorRT name the backend uses exists in the real bindings of TensorRT 10 and 11.

``tests/fixtures/tensorrt-api/`` holds, xz-compressed, the text of the real tensorrt bindings wheels (8.6, 10.3,
10.16 and 11.4) as ``tools/tensorrt_api.sh`` writes it: the text of each binding (`strings` of the .so: every class, method, enum member and docstring). The bindings
cannot be imported without a GPU stack, so this is a text check: a name "exists" when it is a string of the
binding (possibly the tail of a longer one: the linker merges string suffixes) or a word of its docstrings.
Names present in only one version must sit behind ``hasattr``/``getattr`` feature detection in the source.
"""

from __future__ import annotations

import ast
import lzma
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

import densegraph.export.tensorrt as backend

SOURCE = Path(backend.__file__)
REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "tests" / "fixtures" / "tensorrt-api"

# variables (and self._<name> attributes) that hold TensorRT objects in the backend
TRT_OBJECTS = {
    "builder", "network", "parser", "config", "profile", "cache", "runtime", "engine", "context", "err",
    "tensor",
}  # fmt: skip

# every method/property the backend touches on those objects (kept explicit: the test also checks it is
# complete and not stale); each must exist in both versions unless feature-detected
TRT_MEMBERS = {
    # IBuilder
    "create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
    "num_DLA_cores",
    # INetworkDefinition / ITensor
    "num_inputs", "get_input", "num_outputs", "get_output", "name", "shape", "dtype",
    # OnnxParser / ParserError
    "parse_from_file", "num_errors", "get_error", "code", "desc", "node",
    # IBuilderConfig / IOptimizationProfile / ITimingCache
    "set_memory_pool_limit", "set_flag", "clear_flag", "add_optimization_profile", "set_shape",
    "create_timing_cache", "set_timing_cache", "get_timing_cache", "serialize", "default_device_type",
    "DLA_core", "hardware_compatibility_level",
    # Runtime / ICudaEngine / IExecutionContext
    "engine_host_code_allowed", "deserialize_cuda_engine", "num_io_tensors", "get_tensor_name",
    "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape", "get_tensor_profile_shape",
    "create_execution_context", "set_input_shape", "set_tensor_address", "execute_async_v3",
}  # fmt: skip

# names that exist in only one of the two versions (``Enum.MEMBER`` or a member name), with the text that
# shows it; the strings "FP16"/"INT8" alone are not enough: DataType.INT8 exists in both
VERSION_ONLY = {
    "BuilderFlag.FP16": (r"Enable FP16 layer selection", {"10"}),  # removed in 11
    "BuilderFlag.INT8": (r"Enable Int8 layer selection", {"10"}),  # removed in 11
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": (r"(?m)^EXPLICIT_BATCH$", {"10"}),
    "platform_has_fast_fp16": (r"(?m)^platform_has_fast_fp16$", {"10"}),
}
# and the same check the other way round: DataType.INT8 is documented in both
BOTH = {"DataType.INT8": r"Signed 8-bit integer representing a quantized"}


def _version_only(chain: list[str]) -> str | None:
    dotted = ".".join(chain)
    return next((k for k in VERSION_ONLY if dotted == k or dotted.endswith("." + k) or k in chain), None)


# APIs removed in TensorRT 10 or 11 that the backend must never touch
REMOVED = {
    "build_engine", "build_cuda_engine", "max_workspace_size", "max_batch_size", "execute_async_v2",
    "execute_async", "execute_v2", "get_binding_index", "num_bindings", "binding_is_input",
    "get_binding_shape", "set_binding_shape", "int8_calibrator", "set_calibration_profile",
    "IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "platform_has_fast_fp16",
    "platform_has_fast_int8", "EXPLICIT_BATCH", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
}  # fmt: skip


@dataclass
class ApiText:
    """The text of one TensorRT binding."""

    version: str
    text: str

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    @cached_property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @cached_property
    def line_set(self) -> set[str]:
        return set(self.lines)

    def has_line(self, name: str) -> bool:
        """``name`` is a string of its own in the binary (the strict test)."""
        return name in self.line_set

    def has(self, name: str) -> bool:
        """``name`` is a binding string, the tail of one, or a word of the docstrings."""
        if name in self.line_set or any(line.endswith(name) for line in self.lines):
            return True
        return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", self.text) is not None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.name[len("tensorrt-") : -len(".txt.xz")].split("."))


@pytest.fixture(scope="session")
def api() -> dict[str, ApiText]:
    """The API text of the newest TensorRT 10 and 11 in ``tests/fixtures/tensorrt-api`` (xz-compressed)."""
    files = {}
    for major in ("10", "11"):
        hits = sorted(API_DIR.glob(f"tensorrt-{major}.*.txt.xz"), key=_version_key)
        assert hits, f"no TensorRT {major} API text in {API_DIR} (tools/tensorrt_api.sh makes it)"
        files[major] = hits[-1]
    return {
        major: ApiText(
            path.name[len("tensorrt-") : -len(".txt.xz")], lzma.decompress(path.read_bytes()).decode()
        )
        for major, path in files.items()
    }


# ---------------------------------------------------------------------------------------------------------
# what the source uses


def _chain(node: ast.AST) -> list[str] | None:
    """``trt.A.B`` -> ["A", "B"]; None if not rooted at the name ``trt``."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt":
        return parts[::-1]
    return None


def _object_name(node: ast.AST) -> str | None:
    """``builder`` or ``self._builder`` -> "builder" when it names a TensorRT object."""
    if isinstance(node, ast.Name) and node.id in TRT_OBJECTS:
        return node.id
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("_")
        and node.attr[1:] in TRT_OBJECTS
    ):
        return node.attr[1:]
    return None


@dataclass
class Uses:
    chains: list[tuple[list[str], int]]  # direct trt.X.Y accesses (maximal chains) with their line
    guarded: dict[str, list[str]]  # name -> base chain, for hasattr/getattr(trt..., "name") and on objects
    dynamic_getattr: list[list[str]]  # getattr(trt.X, <not a constant>)
    members: dict[str, int]  # attribute accessed on a TensorRT object -> line
    keywords: dict[str, set[str]]  # member -> keyword arguments passed to it
    logger_methods: set[str]  # methods of classes deriving from trt.ILogger


def _uses(tree: ast.AST) -> Uses:
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    uses = Uses([], {}, [], {}, {}, set())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _chain(node)
            if chain is not None and not isinstance(parents.get(node), ast.Attribute):
                uses.chains.append((chain, node.lineno))
            obj = _object_name(node.value)
            if obj is not None:
                uses.members.setdefault(node.attr, node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and len(node.args) >= 2:
                base, name = node.args[0], node.args[1]
                base_chain = _chain(base) if _chain(base) is not None else None
                if base_chain is None and _object_name(base) is not None:
                    base_chain = [f"<{_object_name(base)}>"]
                if base_chain is None:
                    continue
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    uses.guarded[name.value] = base_chain
                else:
                    uses.dynamic_getattr.append(base_chain)
            elif isinstance(func, ast.Attribute) and _object_name(func.value) is not None:
                uses.keywords.setdefault(func.attr, set()).update(k.arg for k in node.keywords if k.arg)
        elif isinstance(node, ast.ClassDef) and any(_chain(b) == ["ILogger"] for b in node.bases):
            uses.logger_methods |= {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
    return uses


@pytest.fixture(scope="module")
def uses() -> Uses:
    return _uses(ast.parse(SOURCE.read_text(), filename=str(SOURCE)))


# ---------------------------------------------------------------------------------------------------------
# the checks


def test_api_texts_are_tensorrt_10_and_11(api: dict[str, ApiText]) -> None:
    assert sorted(api) == ["10", "11"]
    for text in api.values():
        assert text.has_line("execute_async_v3") and text.has_line("build_serialized_network")
        assert not text.has_line("execute_async_v2") and not text.has_line("build_engine")
    # the evidence behind VERSION_ONLY and BOTH still holds for these bindings
    for name, (pattern, versions) in VERSION_ONLY.items():
        present = {major for major, text in api.items() if re.search(pattern, text.text)}
        assert present == versions, f"{name}: expected only in {versions}, found in {present}"
    for name, pattern in BOTH.items():
        assert all(re.search(pattern, text.text) for text in api.values()), name


def test_the_source_is_seen(uses: Uses) -> None:
    """Guard against a broken AST walk that would make the other tests vacuous."""
    assert len(uses.chains) > 20 and len(uses.members) > 30
    assert ["BuilderFlag", "GPU_FALLBACK"] in [c for c, _ in uses.chains]
    assert uses.guarded.get("FP16") == ["BuilderFlag"] and uses.guarded.get("INT8") == ["BuilderFlag"]
    assert "log" in uses.logger_methods


def test_every_trt_attribute_exists_in_both_versions(api: dict[str, ApiText], uses: Uses) -> None:
    missing = []
    for chain, line in uses.chains:
        for name in chain:
            if name.startswith("__") and name != "__version__":
                continue
            for text in api.values():
                if not text.has(name):
                    missing.append(
                        f"line {line}: trt.{'.'.join(chain)}: {name!r} not in TensorRT {text.version}"
                    )
    assert not missing, "\n".join(missing)


def test_names_of_one_version_only_are_feature_detected(api: dict[str, ApiText], uses: Uses) -> None:
    unguarded = []
    for chain, line in uses.chains:
        only = _version_only(chain)
        if only is not None:
            unguarded.append(f"line {line}: trt.{'.'.join(chain)} is {only!r}, of one version only")
        for name in chain:
            strict = {major for major, text in api.items() if text.has_line(name)}
            if len(strict) == 1 and ".".join(chain) not in BOTH:
                unguarded.append(f"line {line}: trt.{'.'.join(chain)}: {name!r} is in TensorRT {strict} only")
    assert not unguarded, "\n".join(unguarded)
    # a guarded name exists in at least one version, and the version-only ones the source needs are guarded
    for name in uses.guarded:
        assert any(text.has(name) for text in api.values()), f"guarded {name!r} exists in no version"
    assert {"FP16", "INT8"} <= set(uses.guarded)
    # the only dynamic lookup is BuilderFlag by a precision plan's flag names, all of them guarded
    assert uses.dynamic_getattr == [["BuilderFlag"]]
    plans = {
        backend.precision_plan(p, info, legacy_flags=legacy, dla=dla).builder_flags
        for p, info in _plan_inputs()
        for legacy in (True, False)
        for dla in (True, False)
        if _plan_ok(p, info, legacy, dla)
    }
    assert {flag for flags in plans for flag in flags} <= {
        n for n, base in uses.guarded.items() if base == ["BuilderFlag"]
    }


def _plan_inputs() -> list[tuple[str, backend.OnnxInfo]]:
    def info(fp16: bool, qdq: bool) -> backend.OnnxInfo:
        return backend.OnnxInfo("m.onnx", "", "images", ("batch", 3, 8, 8), "float", ("logits",), fp16, qdq)

    return [
        (p, info(fp16, qdq)) for p in backend.PRECISIONS for fp16 in (False, True) for qdq in (False, True)
    ]


def _plan_ok(precision: str, info: backend.OnnxInfo, legacy: bool, dla: bool) -> bool:
    try:
        backend.precision_plan(precision, info, legacy_flags=legacy, dla=dla)
    except backend.DensegraphError:
        return False
    return True


def test_member_list_is_complete_and_current(uses: Uses) -> None:
    used = set(uses.members)
    guarded_members = {n for n, base in uses.guarded.items() if base[0].startswith("<")}
    assert used - TRT_MEMBERS - guarded_members == set(), "add these to TRT_MEMBERS (and check them)"
    assert TRT_MEMBERS - used == set(), "stale entries in TRT_MEMBERS"


def test_every_member_exists_in_both_versions(api: dict[str, ApiText], uses: Uses) -> None:
    missing = [
        f"{name!r} (line {uses.members.get(name)}) not in TensorRT {text.version}"
        for name in sorted(TRT_MEMBERS | uses.logger_methods - {"__init__", "errors"})
        for text in api.values()
        if not text.has(name)
    ]
    assert not missing, "\n".join(missing)
    for name in TRT_MEMBERS:
        strict = {major for major, text in api.items() if text.has_line(name)}
        assert _version_only([name]) is None and len(strict) != 1, (
            f"{name!r} is in one version only: feature-detect it"
        )


def test_guarded_members_exist_somewhere(api: dict[str, ApiText], uses: Uses) -> None:
    for name, base in uses.guarded.items():
        if base[0].startswith("<"):
            assert any(text.has_line(name) for text in api.values()), name


def test_keyword_arguments_are_documented(api: dict[str, ApiText], uses: Uses) -> None:
    for member, keywords in uses.keywords.items():
        for keyword in keywords:
            for text in api.values():
                assert f":arg {keyword}:" in text.text, (
                    f"{member}({keyword}=...) not in TensorRT {text.version}"
                )


def test_no_removed_api(uses: Uses) -> None:
    names = {n for chain, _ in uses.chains for n in chain} | set(uses.members)
    assert not names & REMOVED, f"removed TensorRT APIs used: {sorted(names & REMOVED)}"


def test_features_are_detected_not_parsed_from_versions() -> None:
    tree = ast.parse(SOURCE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            inside = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            assert "__version__" not in inside, f"line {node.lineno}: compares trt.__version__"
    # the only version arithmetic is the sidecar compatibility check of a built engine
    callers = {
        f.name
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "_version_tuple"
    }
    assert callers == {"check_engine_compat"}


def test_the_fake_tensorrt_matches_the_real_api(api: dict[str, ApiText]) -> None:
    """The fake used by test_tensorrt.py offers only real names, and lacks what each real version lacks."""
    import enum
    import inspect
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_tensorrt import make_fake_tensorrt

    for major, text in api.items():
        fake = make_fake_tensorrt(major)
        missing = []
        for attr, value in vars(fake).items():
            if attr.startswith("_") or attr == "fake":
                continue
            if not text.has(attr):
                missing.append(attr)
            if isinstance(value, type) and issubclass(value, enum.Enum):
                missing += [f"{attr}.{m.name}" for m in value if not text.has(m.name)]
            elif inspect.isclass(value):
                own = [n for n in vars(value) if not n.startswith("_") and n not in ("Severity", "fake")]
                missing += [f"{attr}.{n}" for n in own if not text.has(n)]
        assert not missing, f"fake names not in TensorRT {text.version}: {missing}"
        for key, (_, versions) in VERSION_ONLY.items():
            if "." in key:
                enum_name, member = key.split(".")
                assert hasattr(getattr(fake, enum_name), member) == (major in versions), (key, major)
