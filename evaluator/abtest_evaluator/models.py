"""Model construction from ``timm/NAME`` or ``torchvision/NAME``, with pretrained weights or a checkpoint, or from an
artefact file (abtest_evaluator.artefacts); and the precision a model runs at."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from abtest_api.constants import BF16, FP16, FP32, INT8_DYNAMIC
from abtest_api.errors import UserError
from abtest_evaluator import artefacts

# Wrappers that training scripts put around a state dict (timm train.py, Lightning, plain loops).
STATE_DICT_KEYS = ("state_dict_ema", "state_dict", "model_state_dict", "model", "module")


class PretrainedUnavailable(UserError):
    """The hub's pretrained weights could not be fetched (no network, no cache)."""


@dataclass
class LoadedModel:
    module: nn.Module
    architecture: str
    num_classes: int
    pretrained_cfg: dict | None
    weights: str  # "pretrained", "checkpoint:<path>", "artefact:<path>" or "random"
    runtime: artefacts.Runtime | None = None  # what runs an artefact (None: PyTorch eager)


def split_architecture(architecture: str) -> tuple[str, str]:
    library, _, name = architecture.partition("/")
    if library not in ("timm", "torchvision") or not name:
        raise UserError(f"--model {architecture!r} must be timm/NAME or torchvision/NAME (e.g. timm/resnet18)")
    return library, name


def _unknown(architecture: str, known: list[str]) -> UserError:
    library, name = split_architecture(architecture)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(f'{library}/{c}' for c in close)}?" if close else ""
    return UserError(f"unknown model {architecture!r}{hint} (list them with {library}.list_models())")


def _build(architecture: str, num_classes: int, in_chans: int, pretrained: bool) -> tuple[nn.Module, dict | None]:
    library, name = split_architecture(architecture)
    if library == "timm":
        import timm

        if not timm.is_model(name):
            raise _unknown(architecture, timm.list_models())
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
        return model, dict(model.pretrained_cfg or {})
    import torchvision.models as tvm

    if name not in tvm.list_models():
        raise _unknown(architecture, tvm.list_models())
    if in_chans != 3:
        raise UserError(f"torchvision/{name} takes 3 input channels; drop --in-chans (grey images are replicated to RGB)")
    if pretrained:
        weights = tvm.get_model_weights(name).DEFAULT
        model = tvm.get_model(name, weights=weights)
        if num_classes != len(weights.meta["categories"]):
            raise UserError(
                f"torchvision/{name} pretrained weights have {len(weights.meta['categories'])} classes, not {num_classes}; use --checkpoint for a fine-tuned head"
            )
        return model, None
    return tvm.get_model(name, weights=None, num_classes=num_classes), None


def build_model(
    architecture: str, num_classes: int, in_chans: int = 3, pretrained: bool = False, checkpoint: str | None = None
) -> LoadedModel:
    if pretrained and checkpoint:
        raise UserError("pass either --pretrained or --checkpoint, not both")
    if pretrained:  # offline, the hub retries each file with a warning per try: the one-line error below says it all
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    try:
        module, cfg = _build(architecture, num_classes, in_chans, pretrained)
    except UserError:
        raise
    except Exception as err:  # hub download failures come in many types (OSError, HTTPError, LocalEntryNotFoundError…)
        if not pretrained:
            raise
        raise PretrainedUnavailable(
            f"could not fetch pretrained weights for {architecture} ({artefacts.first_line(err)}); offline, fill a weights cache where the hub "
            "is reachable (abtest cache-weights FILE --dir DIR) and mount it as spec.weightsCache, or use --checkpoint FILE (spec.models[].checkpoint)"
        ) from None
    weights = "pretrained" if pretrained else "random"
    if checkpoint:
        load_checkpoint(module, checkpoint, architecture, num_classes)
        weights = f"checkpoint:{checkpoint}"
    return LoadedModel(module.eval(), architecture, num_classes, cfg, weights)


def load_artefact_model(
    fmt: str, path: str, input_size: tuple[int, int, int], num_classes: int, device: str = "cpu", threads: int | None = None
) -> LoadedModel:
    module, runtime = artefacts.load_artefact(fmt, path, input_size, num_classes, device, threads)
    return LoadedModel(module, fmt, num_classes, None, f"artefact:{path}", runtime)


HALF_DTYPES = {FP16: torch.float16, BF16: torch.bfloat16}  # a half-precision variant's weights and inputs


def apply_precision(module: nn.Module, precision: str) -> nn.Module:
    """The model at ``precision``: fp16/bf16 weights, or int8-dynamic (its linear layers quantized with PyTorch's
    dynamic quantization: int8 weights, activations quantized per batch; convolutions stay float32)."""
    if precision == FP32:
        return module
    if precision == INT8_DYNAMIC:
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
    return module.to(HALF_DTYPES[precision])


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"checkpoint {path} does not exist; check --checkpoint (spec.models[].checkpoint) and the models volume")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file), device="cpu")
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} is not a readable .pth/.safetensors state dict ({err.__class__.__name__}: {str(err).splitlines()[0][:120]})"
        ) from None
    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no state dict (expected tensors, optionally under 'state_dict' or 'model')")
    # DataParallel / DDP / torch.compile prefixes
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(module: nn.Module, path: str, architecture: str, num_classes: int) -> None:
    state = read_state_dict(path)
    expected = module.state_dict()
    mismatched = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if mismatched:
        key = mismatched[0]
        shape, want = tuple(state[key].shape), tuple(expected[key].shape)
        if shape[:1] != want[:1] and want[:1] == (num_classes,):
            raise UserError(
                f"checkpoint {path} has {shape[0]} classes ({key} {shape}) but the model was built for {num_classes}; set --num-classes {shape[0]} (spec.models[].numClasses) or use the matching dataset"
            )
        raise UserError(
            f"checkpoint {path} does not fit {architecture}: {key} is {shape} in the file, {want} in the model; check --model and --in-chans"
        )
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit {architecture}: {len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); check --model"
        )
    module.load_state_dict(state, strict=True)
