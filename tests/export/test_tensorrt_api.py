"""Every TensorRT name the backend uses exists, as a member of its class, in the real bindings of TensorRT 8.6,
10.3, 10.16 and 11.4 -- or sits behind feature detection.

``tests/fixtures/tensorrt-api/`` holds, xz-compressed, the text of the real tensorrt bindings (``strings`` of
the .so, as ``tools/tensorrt_api.sh`` writes it); the bindings cannot be imported without a GPU stack. A bare
string proves little (``FP16`` is a string of 11.4 although ``BuilderFlag.FP16`` is gone), so a name counts as
a member of class ``C`` only on evidence tied to ``C``:

- a pybind doc symbol ``tensorrt::<C>Doc::<name>`` (mangled ``_ZN8tensorrt..<C>DocL..<name>E``);
- an ``:ivar <name>:`` line inside ``C``'s class docstring (found by its first line, :data:`CLASS_DOCS`);
- for an enum, ``<name>`` as a line of the enum's run of member strings (pybind registers an enum's values
  together; the run is found by an anchor member and cut where the neighbouring enum starts, :data:`ENUMS`);
- the C++ member function it binds, ``nvinfer1::<C++ class>::<method>`` (:data:`CPP_METHODS`);
- the value's own docstring (:data:`MEMBER_DOCS`), for names the dump cannot show as a line: strings under
  4 characters (``DeviceType.DLA``) and names the linker merged into the tail of a longer string
  (``DataType.INT8``, ``ILogger.Severity.ERROR``);
- last, for the few methods whose binding leaves no class-tied trace in some dump (:data:`UNTRACED`), the
  name as a string (or a word of the docstrings); they have kept their names and signatures since TensorRT 8 and the fake
  enforces those signatures.

Versions are picked by number from the fixture folder. Names missing from some version must be guarded by
``hasattr``/``getattr`` somewhere in the backend.
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
from densegraph.errors import DensegraphError
from densegraph.export.tensorrt import options, trt_api

SOURCES = sorted(Path(backend.__file__).parent.glob("*.py"))
REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "tests" / "fixtures" / "tensorrt-api"

# variables (and self._<name> attributes) that hold TensorRT objects in the backend, and their classes
TRT_OBJECTS = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "cache": "ITimingCache", "runtime": "Runtime", "engine": "ICudaEngine",
    "context": "IExecutionContext", "err": "ParserError", "tensor": "ITensor", "severity": "Severity",
}  # fmt: skip

# the C++ names of the pybind doc namespaces where they differ from the Python class name
DOC_NAMES = {
    "Builder": "IBuilder",
    "Runtime": "IRuntime",
    "OnnxParser": "IParser",
    "ParserError": "IParserError",
}

# the first line of each class docstring (all four versions); its indented lines that follow hold the :ivar list
CLASS_DOCS = {
    "Builder": r"^    Builds an :class:`ICudaEngine` from a :class:`INetworkDefinition` \.$",
    "Runtime": r"^    Allows a serialized :class:`ICudaEngine` to be deserialized\.$",
    "INetworkDefinition": r"^    Represents a TensorRT Network from which the Builder can build an Engine",
    "ITensor": r"^    A tensor in an :class:`INetworkDefinition` \.$",
    "ICudaEngine": r"^    An :class:`ICudaEngine` for executing inference on a built network\.$",
    "IExecutionContext": r"^    Context for executing inference using an :class:`ICudaEngine` \.$",
    "IOptimizationProfile": r"^    Optimization profile for dynamic input dimensions and shape tensors\.$",
    "OnnxParser": r"^    This class is used for parsing ONNX models into a TensorRT network definition",
    # IBuilderConfig's docstring is indented by 8 and its first property is unique to it
    "IBuilderConfig": r"^        :ivar avg_timing_iterations: ",
}

# enum -> (anchor members, members that start the neighbouring enums): the enum's run of member strings is
# the block of consecutive UPPER_CASE/docstring lines around an anchor, cut at the neighbours' first members
ENUMS = {
    "BuilderFlag": (("GPU_FALLBACK",), ("WORKSPACE",)),
    "MemoryPoolType": (
        ("DLA_MANAGED_SRAM",),
        ("CALIBRATE_BEFORE_FUSION", "PROFILE_SHARING_0806", "AMPERE_PLUS"),
    ),
    "HardwareCompatibilityLevel": (("AMPERE_PLUS",), ("SAME_AS_BUILD", "GPU device")),
    "NetworkDefinitionCreationFlag": (("STRONGLY_TYPED", "EXPLICIT_BATCH"), ()),
    "Severity": (("VERBOSE",), ()),
}

# (class, member) -> the C++ member function the Python method binds
CPP_METHODS = {
    ("Builder", "create_network"): "createNetworkV2",
    ("Builder", "create_builder_config"): "createBuilderConfig",
    ("Builder", "create_optimization_profile"): "createOptimizationProfile",
    ("Builder", "build_serialized_network"): "buildSerializedNetwork",
    ("Builder", "num_DLA_cores"): "getNbDLACores",
    ("ParserError", "desc"): "desc",
    ("ParserError", "node"): "node",
    ("ParserError", "node_name"): "nodeName",
    ("ParserError", "node_operator"): "nodeOperator",
    ("Runtime", "deserialize_cuda_engine"): "deserializeCudaEngine",
    ("ICudaEngine", "create_execution_context"): "createExecutionContext",
    ("IBuilderConfig", "create_timing_cache"): "createTimingCache",
    ("IExecutionContext", "execute_async_v3"): "enqueueV3",
    ("INetworkDefinition", "get_input"): "getInput",
    ("INetworkDefinition", "get_output"): "getOutput",
    ("ITimingCache", "serialize"): "serialize",
}
CPP_CLASSES = {
    "Builder": "IBuilder",
    "Runtime": "IRuntime",
    "OnnxParser": "IParser",
    "ParserError": "IParserError",
}

# methods with no class-tied trace in some dump (see the module docstring)
UNTRACED = {
    ("OnnxParser", "parse_from_file"), ("OnnxParser", "get_error"), ("IOptimizationProfile", "set_shape"),
    ("ParserError", "code"), ("ParserError", "desc"), ("IBuilderConfig", "create_timing_cache"),
    ("Runtime", "deserialize_cuda_engine"),
}  # fmt: skip

# (class, member) -> the member's own docstring, where the dump cannot show the name itself
MEMBER_DOCS = {
    ("DeviceType", "GPU"): r"(?m)^GPU device$",
    ("DeviceType", "DLA"): r"(?m)^DLA core$",
    ("BuilderFlag", "INT8"): r"(?m)^Enable Int8 layer selection",
    ("TensorIOMode", "INPUT"): r"(?m)^Tensor is input to the engine\.$",
    ("DataType", "FLOAT"): r"(?m)^(32-bit floating point format\.|FLOAT)$",
    ("DataType", "HALF"): r"(?m)^IEEE 16-bit floating-point format\.$",
    ("DataType", "INT8"): r"(?m)^Signed 8-bit integer representing a quantized floating-point value\.$",
    ("DataType", "INT32"): r"(?m)^Signed 32-bit integer format\.$",
    ("DataType", "INT64"): r"(?m)^Signed 64-bit integer format\.$",
    ("DataType", "BF16"): r"(?m)^Brain float -- has an 8 bit exponent and 8 bit significand",
    ("DataType", "BOOL"): r"(?m)^8-bit boolean\. 0 = false, 1 = true",
    ("DataType", "UINT8"): r"(?m)^UINT8$",
    ("Severity", "ERROR"): r"(?m)^    Represents an application error\.$",
    ("Severity", "INTERNAL_ERROR"): r"(?m)^    Represents an internal error\. Execution is unrecoverable\.$",
    ("Severity", "WARNING"): r"(?m)^    Represents an application error that TensorRT has recovered from",
    ("TensorIOMode", "OUTPUT"): r"(?m)^Tensor is output to the engine\.$",
}

CHECKED_ENUMS = {*ENUMS, "DataType", "DeviceType", "TensorIOMode"}

_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass
class ApiText:
    """The text of one TensorRT binding."""

    version: str
    text: str

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("."))

    @cached_property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @cached_property
    def line_set(self) -> set[str]:
        return set(self.lines)

    def has_line(self, name: str) -> bool:
        """``name`` is a string of its own in the binary."""
        return name in self.line_set

    def _class_doc(self, cls: str) -> list[str]:
        head = CLASS_DOCS.get(cls)
        if head is None:
            return []
        for i, line in enumerate(self.lines):
            if re.search(head, line):
                block = [line]
                for nxt in self.lines[i + 1 :]:
                    if nxt and not nxt.startswith(" "):
                        break
                    block.append(nxt)
                return block
        return []

    def _enum_run(self, enum: str) -> list[str]:
        anchors, stops = ENUMS[enum]
        lines = self.lines
        for i, line in enumerate(lines):
            if line not in anchors:
                continue
            member = lambda s: bool(_UPPER.match(s)) or (" " in s and not s.startswith("_Z"))  # noqa: E731
            lo = i
            while lo > 0 and member(lines[lo - 1]) and lines[lo - 1] not in stops:
                lo -= 1
            hi = i
            while hi + 1 < len(lines) and member(lines[hi + 1]) and lines[hi + 1] not in stops:
                hi += 1
            return lines[lo : hi + 1]
        return []

    def member(self, cls: str, name: str) -> bool:
        """``name`` is a member of ``cls`` in this binding (see the module docstring for the evidence)."""
        for doc in {cls + "Doc", DOC_NAMES.get(cls, cls) + "Doc"}:
            if re.search(rf"_ZN8tensorrt{len(doc)}{doc}L{len(name)}{re.escape(name)}E", self.text):
                return True
        cpp, method = CPP_CLASSES.get(cls, cls), CPP_METHODS.get((cls, name))
        if method and re.search(rf"{len(cpp)}{cpp}{len(method)}{method}E", self.text):
            return True
        if any(re.match(rf"^\s+:ivar {re.escape(name)}:", line) for line in self._class_doc(cls)):
            return True
        if cls in ENUMS and name in self._enum_run(cls):
            return True
        pattern = MEMBER_DOCS.get((cls, name))
        if pattern is not None and re.search(pattern, self.text) is not None:
            return True
        return (cls, name) in UNTRACED and self.has_name(name)

    def has_name(self, name: str) -> bool:
        """A top-level name: a string of its own, or the tail of one (the linker merges ``Builder`` into
        ``IBuilder``), or a word of the docstrings (``log``, under the 4 characters ``strings`` keeps)."""
        if name in self.line_set or any(line.endswith(name) for line in self.lines):
            return True
        return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", self.text) is not None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.name[len("tensorrt-") : -len(".txt.xz")].split("."))


@pytest.fixture(scope="session")
def api() -> list[ApiText]:
    """Every TensorRT API text of the fixture folder, oldest first (picked by number, not by name)."""
    paths = sorted(API_DIR.glob("tensorrt-*.txt.xz"), key=_version_key)
    return [
        ApiText(".".join(map(str, _version_key(p))), lzma.decompress(p.read_bytes()).decode()) for p in paths
    ]


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
    chains: list[tuple[list[str], str]]  # direct trt.X.Y accesses (maximal chains) with file:line
    guarded: dict[str, list[str]]  # name -> base chain, for hasattr/getattr(trt..., "name") and on objects
    dynamic_getattr: list[list[str]]  # getattr(trt.X, <not a constant>)
    members: dict[tuple[str, str], str]  # (class, attribute) accessed on a TensorRT object -> file:line
    keywords: dict[str, set[str]]  # member -> keyword arguments passed to it
    logger_methods: set[str]  # methods of classes deriving from trt.ILogger
    calibrator_methods: set[str]  # methods of classes deriving from trt.IInt8EntropyCalibrator2


def _uses(sources: list[Path]) -> Uses:
    uses = Uses([], {}, [], {}, {}, set(), set())
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            where = f"{source.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute):
                chain = _chain(node)
                if chain is not None and not isinstance(parents.get(node), ast.Attribute):
                    uses.chains.append((chain, where))
                obj = _object_name(node.value)
                if obj is not None:
                    uses.members.setdefault((TRT_OBJECTS[obj], node.attr), where)
            elif isinstance(node, ast.Call):
                _record_call(node, uses)
            elif isinstance(node, ast.ClassDef) and any(_chain(b) == ["ILogger"] for b in node.bases):
                uses.logger_methods |= {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            elif isinstance(node, ast.ClassDef) and any(
                _chain(b) == ["IInt8EntropyCalibrator2"] for b in node.bases
            ):
                uses.calibrator_methods |= {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
    return uses


def _record_call(node: ast.Call, uses: Uses) -> None:
    func = node.func
    if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and len(node.args) >= 2:
        base, name = node.args[0], node.args[1]
        base_chain = _chain(base)
        if base_chain is None and _object_name(base) is not None:
            base_chain = [f"<{TRT_OBJECTS[_object_name(base) or '']}>"]
        if base_chain is None:
            return
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            uses.guarded[name.value] = base_chain
        else:
            uses.dynamic_getattr.append(base_chain)
    elif isinstance(func, ast.Attribute) and _object_name(func.value) is not None:
        uses.keywords.setdefault(func.attr, set()).update(k.arg for k in node.keywords if k.arg)


@pytest.fixture(scope="module")
def uses() -> Uses:
    return _uses(SOURCES)


def _pairs(uses: Uses) -> dict[tuple[str, str], str]:
    """(class, member) of every use: trt.Enum.MEMBER chains and attributes of TensorRT objects."""
    pairs = {(chain[-2], chain[-1]): where for chain, where in uses.chains if len(chain) >= 2}
    pairs.pop(("ILogger", "Severity"), None)  # the nested enum itself; its members are checked as Severity
    pairs.update(uses.members)
    for name, base in uses.guarded.items():
        if not base:  # a top-level name: test_top_level_names_exist_everywhere
            continue
        cls = base[-1].strip("<>")
        pairs[(cls, name)] = pairs.get((cls, name), "guarded")
    return pairs


# ---------------------------------------------------------------------------------------------------------
# the checks


def test_the_four_bindings_are_there_and_ordered_by_number(api: list[ApiText]) -> None:
    assert [t.key[:2] for t in api] == [(8, 6), (10, 3), (10, 16), (11, 4)]
    assert ".".join(map(str, api[0].key[:2])) == trt_api.MIN_TENSORRT  # the oldest is what we support
    for text in api:
        assert text.has_line("execute_async_v3") and text.has_line("build_serialized_network")


def test_membership_is_per_class(api: list[ApiText]) -> None:
    """The evidence the other checks rest on: what a bare string search got wrong."""
    by = {t.key[:2]: t for t in api}
    trt86, trt103, trt1016, trt114 = by[(8, 6)], by[(10, 3)], by[(10, 16)], by[(11, 4)]
    assert trt114.has_name("FP16")  # a string of 11.4 ...
    assert not trt114.member("BuilderFlag", "FP16")  # ... but no longer a BuilderFlag
    assert all(t.member("BuilderFlag", "FP16") for t in (trt86, trt103, trt1016))
    assert not trt114.member("BuilderFlag", "INT8") and trt103.member("BuilderFlag", "INT8")
    assert not trt114.member("BuilderFlag", "WORKSPACE")  # the neighbouring enum's member
    assert not trt86.member("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
    assert not trt114.member("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")
    assert trt86.member("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")
    assert not trt86.member("DataType", "BF16") and not trt86.member("DataType", "INT64")
    assert trt114.member("DataType", "BF16") and trt103.member("DataType", "INT64")
    assert all(
        t.member("Runtime", "engine_host_code_allowed") and t.member("Runtime", "DLA_core") for t in api
    )
    assert not trt114.member("Runtime", "num_io_tensors") and trt114.member("ICudaEngine", "num_io_tensors")
    assert all(t.member("DataType", "INT8") for t in api)


def test_the_source_is_seen(uses: Uses) -> None:
    """Guard against a broken AST walk that would make the other tests vacuous."""
    assert len(uses.chains) > 20 and len(uses.members) > 30
    assert ["BuilderFlag", "GPU_FALLBACK"] in [c for c, _ in uses.chains]
    assert {"FP16", "INT8", "STRONGLY_TYPED", "EXPLICIT_BATCH", "BF16", "INT64"} <= set(uses.guarded)
    assert ("Runtime", "DLA_core") in uses.members and ("Runtime", "engine_host_code_allowed") in uses.members
    assert "log" in uses.logger_methods


def test_every_name_is_a_member_of_its_class_everywhere_or_guarded(api: list[ApiText], uses: Uses) -> None:
    guarded = set(uses.guarded)
    problems = []
    for (cls, name), where in sorted(_pairs(uses).items()):
        if name.startswith("__"):
            continue
        present = [t.version for t in api if t.member(cls, name)]
        if not present:
            problems.append(f"{where}: {cls}.{name} is in no TensorRT version")
        elif len(present) < len(api) and name not in guarded:
            problems.append(f"{where}: {cls}.{name} is only in TensorRT {present}: feature-detect it")
    assert not problems, "\n".join(problems)


def test_top_level_names_exist_everywhere(api: list[ApiText], uses: Uses) -> None:
    names = {chain[0] for chain, _ in uses.chains} - {"__version__"}
    guarded = {n for n, base in uses.guarded.items() if not base}  # hasattr(trt, "X")
    missing = [
        f"trt.{n} not in {t.version}" for n in sorted(names - guarded) for t in api if not t.has_name(n)
    ]
    missing += [
        f"trt.{n} is in no TensorRT version" for n in sorted(guarded) if not any(t.has_name(n) for t in api)
    ]
    assert not missing, "\n".join(missing)
    # the only dynamic lookups are BuilderFlag members named by a precision plan, all of them guarded
    assert uses.dynamic_getattr == [["BuilderFlag"]]
    plans = {
        options.precision_plan(p, info, legacy_flags=legacy, dla=dla, strong_typing=strong).builder_flags
        for p, info in _plan_inputs()
        for legacy in (True, False)
        for dla in (True, False)
        for strong in (True, False)
        if _plan_ok(p, info, legacy, dla, strong)
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


def _plan_ok(precision: str, info: backend.OnnxInfo, legacy: bool, dla: bool, strong: bool) -> bool:
    try:
        options.precision_plan(precision, info, legacy_flags=legacy, dla=dla, strong_typing=strong)
    except DensegraphError:
        return False
    return True


def test_logger_methods_exist(api: list[ApiText], uses: Uses) -> None:
    for name in uses.logger_methods - {"__init__", "errors", "forget"}:
        assert all(t.has_name(name) for t in api), name


def test_the_calibrator_is_feature_detected_and_its_methods_exist(api: list[ApiText], uses: Uses) -> None:
    """Implicit int8 (DLA on 8.6/10.x) subclasses IInt8EntropyCalibrator2, which TensorRT 11 removed."""
    by = {t.key[:2]: t for t in api}
    assert [v for v, t in by.items() if t.has_name("IInt8EntropyCalibrator2")] == [(8, 6), (10, 3), (10, 16)]
    assert not by[(11, 4)].member("IBuilderConfig", "int8_calibrator")
    assert all(by[v].member("IBuilderConfig", "int8_calibrator") for v in ((8, 6), (10, 3), (10, 16)))
    assert uses.guarded.get("IInt8EntropyCalibrator2") == [] and "int8_calibrator" in uses.guarded
    methods = uses.calibrator_methods - {"__init__"}
    assert methods == {"get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache"}
    for text in api:
        if text.has_name("IInt8EntropyCalibrator2"):
            assert all(text.has_line(m) for m in methods), text.version


def test_keyword_arguments_are_documented(api: list[ApiText], uses: Uses) -> None:
    for member, keywords in uses.keywords.items():
        for keyword in keywords:
            for text in api:
                assert f":arg {keyword}:" in text.text, (
                    f"{member}({keyword}=...) not in TensorRT {text.version}"
                )


# APIs removed in TensorRT 10 or 11 that the backend must never touch (the entropy calibrator and
# IBuilderConfig.int8_calibrator, gone in 11, serve DLA on 8.6/10.x behind feature detection)
REMOVED = {
    "build_engine", "build_cuda_engine", "max_workspace_size", "max_batch_size", "execute_async_v2",
    "execute_async", "execute_v2", "get_binding_index", "num_bindings", "binding_is_input",
    "get_binding_shape", "set_binding_shape", "set_calibration_profile",
    "IInt8Calibrator", "IInt8MinMaxCalibrator", "platform_has_fast_fp16",
    "platform_has_fast_int8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
}  # fmt: skip


def test_no_removed_api(uses: Uses) -> None:
    names = {n for chain, _ in uses.chains for n in chain} | {n for _, n in uses.members}
    assert not names & REMOVED, f"removed TensorRT APIs used: {sorted(names & REMOVED)}"


def test_features_are_detected_not_parsed_from_versions() -> None:
    callers = set()
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                inside = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                assert "__version__" not in inside, f"{source.name}:{node.lineno}: compares trt.__version__"
        callers |= {
            f.name
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef)
            for n in ast.walk(f)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "_version_tuple"
        }
    # the only version arithmetic is the sidecar compatibility check of a built engine
    assert callers == {"check_engine_compat"}


@pytest.mark.parametrize(("flavor", "version"), [("8", (8, 6)), ("10", (10, 16)), ("11", (11, 4))])
def test_the_fake_tensorrt_matches_the_real_api(
    api: list[ApiText], flavor: str, version: tuple[int, int]
) -> None:
    """The fake used by the other tests offers only real members of their real classes, and lacks what each
    real version lacks (its enums exactly: a member the real one has and the fake lacks is fine)."""
    import enum
    import inspect
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_tensorrt import make_fake_tensorrt

    text = next(t for t in api if t.key[:2] == version)
    fake = make_fake_tensorrt(flavor)
    wrong = []
    for attr, value in vars(fake).items():
        if attr.startswith("_") or attr in ("fake", "cuda"):
            continue
        if not text.has_name(attr):
            wrong.append(attr)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            checked = attr in CHECKED_ENUMS  # the enums whose members the backend names
            wrong += [
                f"{attr}.{m.name}"
                for m in value
                if not (text.member(attr, m.name) if checked else text.has_name(m.name))
            ]
        elif inspect.isclass(value):
            own = [n for n in vars(value) if not n.startswith("_") and n not in ("Severity", "fake")]
            wrong += [f"{attr}.{n}" for n in own if not (text.member(attr, n) or text.has_name(n))]
    assert not wrong, f"fake names that are no members in TensorRT {text.version}: {wrong}"
    for cls, name in (("BuilderFlag", "FP16"), ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")):
        assert hasattr(getattr(fake, cls), name) == text.member(cls, name), (cls, name, text.version)
