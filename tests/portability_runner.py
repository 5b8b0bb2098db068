"""Child process of tests/test_portability.py: run ONNX models in one runtime, one batch at a time.

    python tests/portability_runner.py RUNTIME JOBS.json

``JOBS.json`` lists ``{"model": path, "inputs": path.npz, "batch": n, "output": path.npy}``. Before each job
the runner appends ``start <index>`` to ``<JOBS>.progress`` (flushed and synced) and ``done <index>`` after
it, so that when the runtime crashes the process (an abort, a segfault) the parent knows which model and batch
did it, records that job as failed and starts a new child for the rest. An exception in a job is caught and
written to the job's ``output`` + ``.error``; the next job runs. Runtimes: ``onnxruntime``, ``openvino``
(CPU, ``INFERENCE_PRECISION_HINT=f32``), ``reference`` (``onnx.reference.ReferenceEvaluator``). Every
runtime gets one thread: the parent runs one child per runtime side by side.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def _onnxruntime(model: str) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino(model: str) -> Runner:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    compiled = core.compile_model(core.read_model(model), "CPU", config)
    name = compiled.inputs[0].get_any_name()
    request = compiled.create_infer_request()
    return lambda x: np.array(request.infer({name: x})[compiled.outputs[0]], copy=True)


def _reference(model: str) -> Runner:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model)
    name = evaluator.input_names[0]
    return lambda x: evaluator.run(None, {name: x})[0]


RUNTIMES: dict[str, Callable[[str], Runner]] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "reference": _reference,
}


def main(runtime: str, jobs_path: str) -> int:
    jobs: list[dict[str, Any]] = json.loads(Path(jobs_path).read_text())
    progress = Path(jobs_path + ".progress")
    done = {int(line.split()[1]) for line in _lines(progress) if line.startswith(("done", "crash"))}
    runners: dict[str, Runner] = {}
    with progress.open("a") as log:
        for index, job in enumerate(jobs):
            if index in done:
                continue
            _note(log, f"start {index}")
            try:
                if job["model"] not in runners:
                    runners[job["model"]] = RUNTIMES[runtime](job["model"])
                x = np.load(job["inputs"])[str(job["batch"])]
                np.save(job["output"], np.asarray(runners[job["model"]](x)))
            except Exception:
                Path(job["output"] + ".error").write_text(traceback.format_exc())
            _note(log, f"done {index}")
    return 0


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _note(log: Any, line: str) -> None:
    log.write(line + "\n")
    log.flush()
    os.fsync(log.fileno())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
