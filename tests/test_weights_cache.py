"""Offline pretrained weights (spec.weightsCache): a cache folder in the hubs' layouts, built here from locally saved
weights (never downloaded), read by `abtest evaluate --pretrained` in a network namespace with no network at all."""

import json
import os
import subprocess
import sys

from abtest_api.constants import weights_cache_env
from helpers import INPUT_FLAGS, local_manifest, read_json, timm_hub_cache


def offline(*args, env: dict, timeout=300) -> subprocess.CompletedProcess:
    """A command in a fresh network namespace: no interface but loopback, so no hub can be reached."""
    return subprocess.run(["unshare", "--net", *map(str, args)], capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


def test_the_cache_env_points_both_hubs_at_the_volume_and_switches_them_offline():
    env = weights_cache_env("/weights")
    assert env == {"HF_HOME": "/weights/huggingface", "HF_HUB_OFFLINE": "1", "TORCH_HOME": "/weights/torch"}
    assert weights_cache_env("/w", offline=False) == {"HF_HOME": "/w/huggingface", "TORCH_HOME": "/w/torch"}


def test_pretrained_weights_load_from_the_cache_with_no_network(tmp_path):
    weights = timm_hub_cache(tmp_path / "cache")
    os.chmod(weights, 0o444)
    check = f"""
import json, timm, torch
from safetensors.torch import load_file
model, saved = timm.create_model("test_vit", pretrained=True), load_file({str(weights)!r})
print(json.dumps({{"equal": all(torch.equal(saved[k], v) for k, v in model.state_dict().items())}}))
"""
    proc = offline(sys.executable, "-c", check, env=weights_cache_env(str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["equal"] is True  # the cache's weights, not the seeded random init
    out = tmp_path / "out"
    proc = offline(sys.executable, "-m", "abtest_operator.cli", "evaluate", "--model", "timm/test_vit", "--pretrained",
                   "--dataset", "digits", "--limit", "64", *INPUT_FLAGS, "--device", "cpu", "--workers", "0", "--out", out,
                   env=weights_cache_env(str(tmp_path / "cache")))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert read_json(out / "metrics.json")["weights"] == "pretrained"


def test_no_cache_and_no_network_names_both_ways_out(tmp_path):
    out = tmp_path / "out"
    proc = offline(sys.executable, "-m", "abtest_operator.cli", "evaluate", "--model", "timm/test_vit", "--pretrained",
                   "--dataset", "digits", "--limit", "8", *INPUT_FLAGS, "--device", "cpu", "--workers", "0", "--out", out,
                   env={"HF_HOME": str(tmp_path / "empty"), "TORCH_HOME": str(tmp_path / "empty")})  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "could not fetch pretrained weights for timm/test_vit" in proc.stderr
    assert "abtest cache-weights" in proc.stderr and "spec.weightsCache" in proc.stderr and "--checkpoint FILE" in proc.stderr
    assert not out.exists()


def test_cache_weights_fills_the_layout_the_evaluator_reads(tmp_path):
    """`abtest cache-weights` on a machine whose hub answers from the folder (here: already filled, no network):
    every pretrained model of the manifest loads from the folder; the checkpointed ones are left alone."""
    timm_hub_cache(tmp_path / "cache")
    manifest = local_manifest(tmp_path / "m.yaml", "pretrained", [
        {"name": "vit", "architecture": "timm/test_vit", "pretrained": True},
        {"name": "other", "architecture": "timm/resnet10t", "checkpoint": "/models/resnet.pth"},
    ])  # fmt: skip
    proc = offline(sys.executable, "-m", "abtest_operator.cli", "cache-weights", manifest, "--dir", tmp_path / "cache", env={})
    assert proc.returncode == 0, proc.stderr
    assert "vit: timm/test_vit" in proc.stdout and "other" not in proc.stdout


def test_cache_weights_without_network_says_it_needs_the_hub(tmp_path):
    manifest = local_manifest(tmp_path / "m.yaml", "pretrained", [
        {"name": "vit", "architecture": "timm/test_vit", "pretrained": True},
        {"name": "resnet", "architecture": "timm/resnet10t", "pretrained": True},
    ])  # fmt: skip
    # the hub told to stay offline fails at once (without it, each file is retried for ~25 s first: the test above)
    proc = offline(
        sys.executable, "-m", "abtest_operator.cli", "cache-weights", manifest, "--dir", tmp_path / "cache", env={"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "could not fetch pretrained weights for timm/test_vit" in proc.stderr and "needs network access" in proc.stderr
