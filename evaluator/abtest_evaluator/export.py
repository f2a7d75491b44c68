"""Write a model as an artefact (TorchScript, a torch.export program, ONNX), the files abtest evaluates as models.

The batch dimension stays dynamic, so the evaluator's short last batch runs through the same file. Each file is
staged beside its target and renamed into place (results.staged): a failed export leaves nothing behind.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from abtest_api.constants import EXPORT, ONNX, TORCHSCRIPT
from abtest_evaluator import results

SUFFIXES = {TORCHSCRIPT: ".ts", EXPORT: ".pt2", ONNX: ".onnx"}  # the file name ending each format is written with


def export_model(module: nn.Module, fmt: str, target: Path, input_size: tuple[int, int, int]) -> Path:
    """Write the eval-mode ``module`` as ``fmt`` to ``target``, traced with a batch of two images of ``input_size``."""
    if fmt not in SUFFIXES:
        raise ValueError(f"unknown artefact format {fmt!r}; use one of {', '.join(SUFFIXES)}")
    module, target = module.eval(), Path(target)
    example = torch.zeros((2, *input_size))
    batch = ({0: torch.export.Dim("batch")},)  # positional: whatever the forward calls its input
    with results.staged(target.parent) as stage, torch.inference_mode(False), torch.no_grad():
        staged = stage(target.name)
        if fmt == TORCHSCRIPT:
            torch.jit.save(torch.jit.trace(module, example), str(staged))
        elif fmt == EXPORT:  # through a buffer: torch.export.save names the archive's folder after a file's stem
            buffer = io.BytesIO()
            torch.export.save(torch.export.export(module, (example,), dynamic_shapes=batch), buffer)
            results.write_bytes(staged, buffer.getvalue())
        else:
            # the dynamo exporter (torch.export underneath), one self-contained file: no external weights beside it
            torch.onnx.export(module, (example,), str(staged), input_names=["x"], output_names=["logits"], dynamo=True,
                              dynamic_shapes=batch, external_data=False, verbose=False)  # fmt: skip
        staged.chmod(0o644)  # the evaluator's non-root user reads it from the models volume
    return target
