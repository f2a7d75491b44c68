"""Torch-free resolvers: preprocessing priority, device, precision, CPU threads from the cgroup."""

import sys

import pytest

from abtest_api.errors import UserError
from abtest_evaluator import resolve

RESNET_CFG = {
    "input_size": (3, 224, 224),
    "test_input_size": (3, 288, 288),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.95,
    "test_crop_pct": 1.0,
}


def test_resolvers_do_not_import_torch():
    import subprocess

    code = "import abtest_evaluator.resolve, abtest_evaluator.analysis, abtest_operator.cli, sys; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_pretrained_config_prefers_test_sizes():
    cfg = resolve.resolve_data_config(RESNET_CFG)
    assert cfg.input_size == (3, 288, 288)
    assert cfg.crop_pct == 1.0
    assert cfg.interpolation == "bicubic"


def test_overrides_win_over_pretrained_config():
    cfg = resolve.resolve_data_config(RESNET_CFG, input_size=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=0.5)
    assert cfg.input_size == (3, 32, 32)
    assert (cfg.interpolation, cfg.mean, cfg.std, cfg.crop_pct) == ("bilinear", (0.5,) * 3, (0.25,) * 3, 0.5)


def test_defaults_without_pretrained_config():
    cfg = resolve.resolve_data_config(None)
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.mean == resolve.IMAGENET_MEAN


def test_grey_models_average_the_channel_statistics():
    cfg = resolve.resolve_data_config(RESNET_CFG, in_chans=1)
    assert cfg.input_size[0] == 1
    assert cfg.mean == pytest.approx((sum(RESNET_CFG["mean"]) / 3,))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"input_size": 0}, "--input-size"), ({"crop_pct": 1.5}, "--crop-pct"), ({"interpolation": "cubic"}, "--interpolation")],
)
def test_bad_preprocessing_names_the_flag(kwargs, field):
    with pytest.raises(UserError, match=field):
        resolve.resolve_data_config(None, **kwargs)


def test_device_resolution():
    assert resolve.resolve_device("auto", cuda_available=False) == "cpu"
    assert resolve.resolve_device("auto", cuda_available=True) == "cuda"
    assert resolve.resolve_device("cpu", cuda_available=True) == "cpu"
    with pytest.raises(UserError, match="--device cuda .* no CUDA GPU"):
        resolve.resolve_device("cuda", cuda_available=False)


def test_amp_dtype():
    assert resolve.resolve_amp_dtype("cuda", amp=False) is None
    assert resolve.resolve_amp_dtype("cuda", amp=True) == "float16"
    assert resolve.resolve_amp_dtype("cuda", amp=True, amp_dtype="bfloat16") == "bfloat16"
    assert resolve.resolve_amp_dtype("cpu", amp=True) == "bfloat16"  # CPU autocast has no float16
    # unset: on for CUDA (tensor cores), off for CPU (whose predictions stay float32's)
    assert resolve.resolve_amp_dtype("cuda", amp=None) == "float16"
    assert resolve.resolve_amp_dtype("cpu", amp=None) is None


def test_channels_last_is_on_for_cuda_unless_set():
    assert resolve.resolve_channels_last("cuda", None) and not resolve.resolve_channels_last("cpu", None)
    assert not resolve.resolve_channels_last("cuda", False) and resolve.resolve_channels_last("cpu", True)


def test_workers_follow_the_cpu_limit_unless_set():
    assert resolve.resolve_workers(None, cpus=2) == 1  # one CPU for the loop itself
    assert resolve.resolve_workers(None, cpus=1) == 1
    assert resolve.resolve_workers(None, cpus=12) == 11
    assert resolve.resolve_workers(None, cpus=128) == resolve.MAX_AUTO_WORKERS
    assert resolve.resolve_workers(0, cpus=16) == 0 and resolve.resolve_workers(5, cpus=2) == 5
    with pytest.raises(UserError, match="--workers must be 0 or more"):
        resolve.resolve_workers(-1, cpus=4)


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert resolve.cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert resolve.cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert resolve.cgroup_cpu_limit(tmp_path) == 1


def test_threads_follow_the_quota_not_the_host(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert resolve.resolve_threads(cgroup_root=tmp_path) == 1
    assert resolve.resolve_threads(3, cgroup_root=tmp_path) == 3
