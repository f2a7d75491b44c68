"""Write a model as an artefact (TorchScript, a torch.export program, ONNX), the files abtest evaluates as models.

The batch dimension stays dynamic, so the evaluator's short last batch runs through the same file. Each file is
written beside its target and renamed into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from abtest_api.constants import EXPORT, ONNX, TORCHSCRIPT

SUFFIXES = {TORCHSCRIPT: ".ts", EXPORT: ".pt2", ONNX: ".onnx"}  # the file name ending each format is written with


@contextmanager
def _staged(target: Path):
    """A path in a temporary folder beside ``target``, with its name (a .pt2 archive's folder is named after the
    file), that becomes ``target`` when the block succeeds and vanishes otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield folder / target.name
        (folder / target.name).chmod(0o644)  # the evaluator's non-root user reads it from the models volume
        os.replace(folder / target.name, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def export_model(module: nn.Module, fmt: str, target: Path, input_size: tuple[int, int, int]) -> Path:
    """Write the eval-mode ``module`` as ``fmt`` to ``target``, traced with a batch of two images of ``input_size``."""
    module = module.eval()
    example = torch.zeros((2, *input_size))
    batch = ({0: torch.export.Dim("batch")},)  # positional: whatever the forward calls its input
    with _staged(Path(target)) as staged, torch.inference_mode(False), torch.no_grad():
        if fmt == TORCHSCRIPT:
            torch.jit.save(torch.jit.trace(module, example), str(staged))
        elif fmt == EXPORT:
            torch.export.save(torch.export.export(module, (example,), dynamic_shapes=batch), str(staged))
        elif fmt == ONNX:
            # the dynamo exporter (torch.export underneath), one self-contained file: no external weights beside it
            torch.onnx.export(module, (example,), str(staged), input_names=["x"], output_names=["logits"], dynamo=True,
                              dynamic_shapes=batch, external_data=False, verbose=False)  # fmt: skip
        else:
            raise ValueError(f"unknown artefact format {fmt!r}; use one of {', '.join(SUFFIXES)}")
    return Path(target)
