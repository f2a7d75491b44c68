"""Artefact models: a file in its own format, loaded without its Python class, and never by running its pickles.

- ``torchscript``: ``torch.jit.load``. TorchScript is its own interpreted language: the file's code runs, but only
  TorchScript operators, not arbitrary Python (no pickle beyond its tensor tables).
- ``export``: a ``torch.export`` ``.pt2`` program, ``torch.export.load``. Before loading, the archive's constants
  must all be plain tensors (``torch.load(weights_only=True)`` reads them, forced by ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``);
  an archive with pickled custom objects or opaque constants is refused.
- ``onnx``: an ONNX Runtime session (CUDA or CPU execution provider): a graph of ONNX operators, no code at all.

Each is probed with one batch of zeros of the ABTest's input shape, so a file that does not fit (channels, size,
classes) fails at load with one line naming the file and the fix, not inside the timed loop.
"""

from __future__ import annotations

import json
import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from abtest_api.constants import EXPORT, ONNX, TORCHSCRIPT
from abtest_api.errors import UserError


@dataclass(frozen=True)
class Runtime:
    """What runs an artefact, as metrics.json records it."""

    name: str  # torch.jit, torch.export, onnxruntime
    version: str
    providers: tuple[str, ...] = ()  # ONNX Runtime's execution providers, in order of preference
    host_timed: bool = False  # runs outside PyTorch's CUDA streams: timed by the wall clock, memory not in torch's stats
    not_measured: dict[str, str] = field(default_factory=dict)  # metrics.json field -> why the runtime cannot report it


def first_line(err: Exception) -> str:
    """An exception as one short line: its type and the first line of its message."""
    return f"{err.__class__.__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"


def _fail(fmt: str, path: str, what: str, fix: str) -> UserError:
    return UserError(f"{fmt} artefact {path} {what}; {fix}")


@contextmanager
def _weights_only_loads():
    """Every ``torch.load`` in the block is ``weights_only`` whatever its caller asks (PyTorch's own switch)."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def check_pt2_archive(path: str) -> None:
    """Refuse a ``.pt2`` whose constants are not plain tensors: custom objects and opaque constants are pickles."""
    from torch.export import pt2_archive

    tensor_prefix = pt2_archive.constants.TENSOR_CONSTANT_FILENAME_PREFIX
    try:
        with zipfile.ZipFile(path) as archive:
            formats = [name for name in archive.namelist() if name.endswith("/" + pt2_archive.constants.ARCHIVE_FORMAT_PATH)]
            if not formats or archive.read(formats[0]).decode(errors="replace").strip() != pt2_archive.constants.ARCHIVE_FORMAT_VALUE:
                raise _fail(EXPORT, path, "is a zip file but not a .pt2 archive (no archive_format pt2)", "write it with torch.export.save")
            for name in archive.namelist():
                if not name.endswith("constants_config.json"):
                    continue
                config = json.loads(archive.read(name))
                for constant, entry in (config.get("config") or {}).items():
                    if not str(entry.get("path_name", "")).startswith(tensor_prefix):
                        raise _fail(
                            EXPORT, path, f"holds a constant {constant!r} that is not a tensor (a pickled object)",
                            "export the model without custom objects, or as onnx",
                        )  # fmt: skip
    except zipfile.BadZipFile:
        raise _fail(EXPORT, path, "is not a .pt2 archive (not a zip file)", "write it with torch.export.save") from None


def _load_torchscript(path: str) -> nn.Module:
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as err:
        raise _fail(
            TORCHSCRIPT, path, f"cannot be loaded ({first_line(err)})", "write it with torch.jit.save (or use architecture export/onnx)"
        ) from None


def _load_export(path: str) -> nn.Module:
    check_pt2_archive(path)
    try:
        with _weights_only_loads():
            program = torch.export.load(path)
    except Exception as err:
        raise _fail(EXPORT, path, f"cannot be loaded ({first_line(err)})", "write it with torch.export.save") from None
    return program.module()


class OnnxModule(nn.Module):
    """An ONNX Runtime session as a module: the batch is bound in place (CPU or CUDA memory, no copy) and the logits
    come back in a tensor beside it, so the runner treats it like any other model."""

    def __init__(self, session, num_outputs: int | None = None):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.num_outputs = num_outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float().contiguous()
        if images.is_cuda:  # ONNX Runtime reads the batch on its own stream: the copy and conversion must be done
            torch.cuda.current_stream(images.device).synchronize()
        if self.num_outputs is None:  # the probe: ONNX Runtime allocates the output and tells its shape
            outputs = self.session.run([self.output_name], {self.input_name: images.cpu().numpy()})[0]
            return torch.from_numpy(outputs).to(images.device)
        logits = torch.empty((images.shape[0], self.num_outputs), dtype=torch.float32, device=images.device)
        binding = self.session.io_binding()
        kind, index = images.device.type, images.device.index or 0
        binding.bind_input(self.input_name, kind, index, np.float32, tuple(images.shape), images.data_ptr())
        binding.bind_output(self.output_name, kind, index, np.float32, tuple(logits.shape), logits.data_ptr())
        self.session.run_with_iobinding(binding)
        return logits


def _onnx_session(path: str, device: str, threads: int | None):
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError(
            f"onnx artefact {path}: this image's ONNX Runtime has no CUDA execution provider ({', '.join(ort.get_available_providers())}); "
            "use the GPU evaluator image (onnxruntime-gpu) or set spec.device to cpu"
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are not the user's
    try:
        return ort.InferenceSession(path, sess_options=options, providers=wanted)
    except Exception as err:
        raise _fail(ONNX, path, f"cannot be loaded by ONNX Runtime ({first_line(err)})", "export it with torch.onnx.export") from None


def _check_onnx_input(session, path: str, input_size: tuple[int, int, int]) -> None:
    """A static input shape that differs from the ABTest's names the setting that would fit."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4:
        raise _fail(ONNX, path, f"takes a {len(shape)}-d input {shape}", "an image classifier takes (batch, channels, height, width)")
    for dim, want, setting in zip(shape[1:], input_size, ("spec.models[].inChans", "spec.models[].inputSize", "spec.models[].inputSize")):
        if isinstance(dim, int) and dim != want:
            raise _fail(
                ONNX, path, f"takes inputs of shape {shape}, not (batch, {', '.join(map(str, input_size))})", f"set {setting} to {dim}"
            )


def probe(module: nn.Module, fmt: str, path: str, input_size: tuple[int, int, int], num_classes: int) -> None:
    """One batch of two zero images through the model: it must take the ABTest's input and give num_classes logits."""
    zeros = torch.zeros((2, *input_size))
    try:
        with torch.inference_mode():
            logits = module(zeros)
    except Exception as err:
        raise _fail(
            fmt, path, f"does not take a batch of shape {tuple(zeros.shape)} ({first_line(err)})",
            "set spec.models[].inputSize and inChans to what it was exported with (and export it with a dynamic batch)",
        ) from None  # fmt: skip
    if not isinstance(logits, torch.Tensor) or logits.shape != (2, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        if isinstance(logits, torch.Tensor) and logits.ndim == 2:
            raise _fail(
                fmt, path, f"outputs {logits.shape[1]} classes but the model was built for {num_classes}",
                f"set spec.models[].numClasses to {logits.shape[1]} (--num-classes) or use the matching dataset",
            )  # fmt: skip
        raise _fail(fmt, path, f"outputs {shape}, not (batch, classes) logits", "export the classifier's logits as its only output")


def load_artefact(
    fmt: str, path: str, input_size: tuple[int, int, int], num_classes: int, device: str = "cpu", threads: int | None = None
) -> tuple[nn.Module, Runtime]:
    """The artefact as an eval-mode module on the CPU (an ONNX session already on ``device``), probed, and its runtime."""
    if not Path(path).is_file():
        raise UserError(f"{fmt} artefact {path} does not exist; check --checkpoint (spec.models[].checkpoint) and the models volume")
    if fmt == ONNX:
        import onnxruntime as ort

        session = _onnx_session(path, device, threads)
        _check_onnx_input(session, path, input_size)
        probe(OnnxModule(session), fmt, path, input_size, num_classes)
        runtime = Runtime(
            "onnxruntime", ort.__version__, tuple(session.get_providers()), host_timed=True,
            not_measured={"gpu_memory": "ONNX Runtime allocates its own device memory, outside PyTorch's allocator statistics"},
        )  # fmt: skip
        return OnnxModule(session, num_classes), runtime
    if fmt == TORCHSCRIPT:
        module, runtime = _load_torchscript(path), Runtime("torch.jit", torch.__version__)
    elif fmt == EXPORT:
        module, runtime = _load_export(path), Runtime("torch.export", torch.__version__)
    else:
        raise UserError(f"--model {fmt!r} is not an artefact format; use torchscript, export or onnx")
    probe(module, fmt, path, input_size, num_classes)
    return module, runtime
