"""Artefacts as models (TorchScript, torch.export, ONNX) and precision variants, with the tiny trained resnet: each
predicts as the PyTorch model to the tolerance its format promises, a file that does not fit fails in one line
naming it and the fix, and loading never runs a pickle."""

import io
import json
import os
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from abtest_api.errors import UserError
from abtest_evaluator import artefacts, export, models, resolve
from abtest_evaluator.runner import Runner
from helpers import ARTEFACT_PREPROCESSING, INPUT_FLAGS, abtest_cli, read_json

# The settings the trained resnet's timm config gives it, stated for an artefact (which has no config).
ARTEFACT_FLAGS = [
    *INPUT_FLAGS,
    "--interpolation",
    ARTEFACT_PREPROCESSING["interpolation"],
    "--mean",
    ",".join(map(str, ARTEFACT_PREPROCESSING["mean"])),
    "--std",
    ",".join(map(str, ARTEFACT_PREPROCESSING["std"])),
]
# What each format promises against the PyTorch model on the CPU: TorchScript and torch.export run the same kernels
# (bit-for-bit); ONNX Runtime its own (float32 rounding, measured 7e-8 on the logits).
CONFIDENCE_TOLERANCE = {"torchscript": 0.0, "export": 0.0, "onnx": 1e-5}


def evaluate(out, model, checkpoint, *flags):
    proc = abtest_cli("evaluate", "--model", model, "--checkpoint", checkpoint, "--dataset", "digits", "--device", "cpu",
                      "--workers", "0", "--out", out, *flags)  # fmt: skip
    return proc, (pq.read_table(out / "predictions.parquet") if proc.returncode == 0 else None)


@pytest.mark.parametrize("fmt", sorted(CONFIDENCE_TOLERANCE))
def test_an_artefact_predicts_as_the_pytorch_model_it_was_exported_from(tmp_path, evaluated, exported_models, fmt):
    proc, table = evaluate(tmp_path / fmt, fmt, exported_models[fmt], *ARTEFACT_FLAGS)
    assert proc.returncode == 0, proc.stderr
    reference = pq.read_table(evaluated / "resnet" / "predictions.parquet")  # the .pth through timm, same settings
    assert table.column("pred").to_pylist() == reference.column("pred").to_pylist()
    assert table.column("top5").to_pylist() == reference.column("top5").to_pylist()
    diff = np.abs(table.column("confidence").to_numpy() - reference.column("confidence").to_numpy()).max()
    assert diff <= CONFIDENCE_TOLERANCE[fmt]
    metrics, pytorch = read_json(tmp_path / fmt / "metrics.json"), read_json(evaluated / "resnet" / "metrics.json")
    assert metrics["runtime"]["format"] == fmt and metrics["weights"] == f"artefact:{exported_models[fmt]}"
    assert metrics["data_config"] == pytorch["data_config"]  # the stated preprocessing is the timm config's
    # every metric family, as for a PyTorch model; GPU memory null on the CPU (never 0)
    for family in ("accuracy", "top5", "per_class_accuracy", "confusion_matrix", "ece", "throughput", "confidence", "latency"):
        assert metrics[family] is not None and type(metrics[family]) is type(pytorch[family]), family
    assert metrics["gpu_memory"] is None and metrics["runtime"]["not_measured"] == {}
    if fmt == "onnx":
        assert metrics["runtime"]["name"] == "onnxruntime" and metrics["runtime"]["providers"] == ["CPUExecutionProvider"]


def test_int8_dynamic_is_the_same_checkpoint_quantized(tmp_path, evaluated, trained_models):
    proc, table = evaluate(
        tmp_path / "int8", "timm/resnet10t", trained_models["timm/resnet10t"], *INPUT_FLAGS, "--precision", "int8-dynamic"
    )
    assert proc.returncode == 0, proc.stderr
    reference = pq.read_table(evaluated / "resnet" / "predictions.parquet")
    agree = (table.column("pred").to_numpy() == reference.column("pred").to_numpy()).mean()
    diff = np.abs(table.column("confidence").to_numpy() - reference.column("confidence").to_numpy())
    # int8 weights in the classifier (measured: logits within 1.4e-3): the same top-1 on >= 99% of the digits
    assert agree >= 0.99 and diff.max() < 0.05 and diff.max() > 0  # quantized: close, and not the fp32 model itself
    metrics = read_json(tmp_path / "int8" / "metrics.json")
    assert metrics["precision"] == "int8-dynamic" and metrics["device"]["amp_dtype"] is None


@pytest.mark.parametrize(("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_a_half_precision_variant_runs_its_weights_and_inputs_in_that_dtype(precision, dtype):
    seen = []
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    module.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    runner = Runner(models.apply_precision(module, precision), "cpu", topk=2, input_dtype=models.HALF_DTYPES.get(precision))
    out = runner(torch.randn(3, 3, 2, 2))
    assert seen == [dtype] and module[1].weight.dtype == dtype
    assert out.confidence.dtype == torch.float32 and out.topk.shape == (3, 2)  # softmax in float32 whatever the model's


def test_precision_is_checked_against_the_model_and_the_device():
    assert resolve.resolve_precision("cpu", "int8-dynamic", None) == "int8-dynamic"
    with pytest.raises(UserError, match=r"int8-dynamic runs on the CPU only; set --device cpu"):
        resolve.resolve_precision("cuda", "int8-dynamic", None)
    with pytest.raises(UserError, match=r"--precision fp16 applies to timm/torchvision models; the onnx artefact runs as exported"):
        resolve.resolve_precision("cpu", "fp16", "onnx")
    with pytest.raises(UserError, match=r"--precision 'fp8' is unknown"):
        resolve.resolve_precision("cpu", "fp8", None)


def test_an_artefact_without_its_preprocessing_names_the_missing_settings(tmp_path, exported_models):
    proc, _ = evaluate(tmp_path / "out", "onnx", exported_models["onnx"], *INPUT_FLAGS)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--model onnx has no pretrained config to take preprocessing from; set --interpolation, --mean, --std" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fmt", "size", "classes", "message"),
    [
        (
            "onnx",
            (3, 28, 28),
            10,
            r"takes inputs of shape \['batch', 3, 32, 32\], not \(batch, 3, 28, 28\); set spec.models\[\].inputSize to 32",
        ),
        ("onnx", (1, 32, 32), 10, r"set spec.models\[\].inChans to 3"),
        ("onnx", (3, 32, 32), 100, r"outputs 10 classes but the model was built for 100; set spec.models\[\].numClasses to 10"),
        ("export", (3, 32, 32), 100, r"outputs 10 classes but the model was built for 100"),
        ("torchscript", (1, 32, 32), 10, r"does not take a batch of shape \(2, 1, 32, 32\) .*set spec.models\[\].inputSize and inChans"),
        ("export", (1, 32, 32), 10, r"does not take a batch of shape \(2, 1, 32, 32\)"),
    ],
)
def test_an_artefact_that_does_not_fit_names_the_file_and_the_setting(exported_models, fmt, size, classes, message):
    with pytest.raises(UserError, match=message) as err:
        artefacts.load_artefact(fmt, str(exported_models[fmt]), size, classes)
    assert str(err.value).startswith(f"{fmt} artefact {exported_models[fmt]} ") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("onnx", r"cannot be loaded by ONNX Runtime \(InvalidProtobuf.*; export it with torch.onnx.export"),
        ("export", r"is not a .pt2 archive \(not a zip file\); write it with torch.export.save"),
        ("torchscript", r"cannot be loaded \(RuntimeError.*; write it with torch.jit.save"),
    ],
)
def test_a_malformed_artefact_is_one_line_naming_the_file(tmp_path, fmt, message):
    path = tmp_path / f"broken{export.SUFFIXES[fmt]}"
    path.write_bytes(b"not a model")
    with pytest.raises(UserError, match=message) as err:
        artefacts.load_artefact(fmt, str(path), (3, 32, 32), 10)
    assert str(err.value).startswith(f"{fmt} artefact {path} ") and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"does not exist; check --checkpoint \(spec.models\[\].checkpoint\)"):
        artefacts.load_artefact(fmt, str(tmp_path / "missing"), (3, 32, 32), 10)


def test_a_zip_that_is_not_a_pt2_archive_is_refused(exported_models):
    with pytest.raises(UserError, match=r"is a zip file but not a .pt2 archive"):
        artefacts.load_artefact("export", str(exported_models["torchscript"]), (3, 32, 32), 10)  # TorchScript is a zip too


def _rewrite_pt2(source, target, edit) -> None:
    """A copy of a .pt2 archive with ``edit(name, data) -> data`` applied to each member."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, edit(name, src.read(name)))


class MakesFolder:
    """A pickle that runs code when unpickled: it makes a folder."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def test_a_pt2_archive_never_runs_a_pickled_weight(tmp_path, exported_models):
    marker, control = tmp_path / "ran", tmp_path / "control"
    payload = torch_save(MakesFolder(marker))
    torch.load(io.BytesIO(torch_save(MakesFolder(control))), weights_only=False)  # the payload does run when unpickled
    assert control.is_dir()

    def edit(name, data):
        if name.endswith("weights_config.json"):
            config = json.loads(data)
            config["config"]["conv1.0.weight"]["use_pickle"] = True  # torch.export.load unpickles such a weight
            return json.dumps(config).encode()
        return payload if name.endswith("/data/weights/weight_0") else data

    evil = tmp_path / "evil.pt2"
    _rewrite_pt2(exported_models["export"], evil, edit)
    with pytest.raises(UserError, match=r"export artefact .*evil.pt2 cannot be loaded \(UnpicklingError"):
        artefacts.load_artefact("export", str(evil), (3, 32, 32), 10)
    assert not marker.exists() and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_a_pt2_archive_with_a_custom_object_is_refused_before_loading(tmp_path, exported_models):
    def edit(name, data):
        if name.endswith("constants_config.json"):
            return json.dumps({"config": {"hook": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True}}}).encode()
        return data

    custom = tmp_path / "custom.pt2"
    _rewrite_pt2(exported_models["export"], custom, edit)
    with pytest.raises(
        UserError, match=r"holds a constant 'hook' that is not a tensor \(a pickled object\); export the model without custom objects"
    ):
        artefacts.load_artefact("export", str(custom), (3, 32, 32), 10)


def torch_save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_an_export_that_fails_leaves_no_file(tmp_path):
    class NotTraceable(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no")

    target = tmp_path / "models" / "m.onnx"
    with pytest.raises(Exception, match="no"):  # noqa: B017 (whichever error the exporter wraps it in)
        export.export_model(NotTraceable(), "onnx", target, (3, 8, 8))
    assert list(target.parent.iterdir()) == []


def test_exported_files_are_readable_by_the_evaluators_user(exported_models):
    for path in exported_models.values():
        assert path.stat().st_mode & 0o044 == 0o044, path  # the non-root evaluator reads them from the models volume
