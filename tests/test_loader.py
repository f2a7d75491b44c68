"""The GPU data path, on the CPU: uint8 batches normalised where the model runs give the host path's exact input,
batches keep their order, the runner collects queued results in groups, and a compiled model never sees a new shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from abtest_evaluator import datasets, loader, resolve
from abtest_evaluator.runner import Runner, seed_everything

DATA_CFG = resolve.resolve_data_config(None, 3, input_size=48, crop_pct=0.875)  # timm's bicubic resize + centre crop


def random_images(rng, count=6):
    """RGB and grey, square and not, smaller and larger than the input size."""
    sizes = [(40, 40), (97, 61), (23, 80), (48, 48), (300, 200), (7, 9)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes[:count]]


def test_device_preprocessing_is_bit_identical_to_timms_host_transform():
    images = random_images(np.random.default_rng(0))
    host = torch.stack([loader.build_transform(DATA_CFG, "host")(im) for im in images])
    to_hwc = loader.build_transform(DATA_CFG, "device")
    uint8 = torch.from_numpy(np.stack([to_hwc(im) for im in images]))
    assert uint8.dtype == torch.uint8 and uint8.shape == (6, 48, 48, 3)
    assert uint8.nbytes * 4 == host.nbytes  # a quarter of the bytes through the queues and PCIe
    device = loader.ToModelInput(DATA_CFG, "device", torch.device("cpu"), torch.contiguous_format)(uint8)
    assert device.is_contiguous() and torch.equal(device, host)  # equal bits, not approximately
    channels_last = loader.ToModelInput(DATA_CFG, "device", torch.device("cpu"), torch.channels_last)(uint8)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(channels_last, host)


def test_grey_images_get_their_channel_axis():
    grey_cfg = resolve.resolve_data_config(None, 1, input_size=16, crop_pct=1.0)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8), mode="L")
    hwc = loader.build_transform(grey_cfg, "device")(image)
    assert hwc.shape == (16, 16, 1)
    batch = loader.ToModelInput(grey_cfg, "device", torch.device("cpu"), torch.contiguous_format)(torch.from_numpy(hwc[None]))
    assert torch.equal(batch[0], loader.build_transform(grey_cfg, "host")(image))


def digits_batches(preprocess: str, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = datasets.load_dataset("digits", "test", limit=70)
    dataset = loader.TransformedDataset(ds, loader.build_transform(DATA_CFG, preprocess), "RGB")
    to_input = loader.ToModelInput(DATA_CFG, preprocess, torch.device("cpu"), torch.contiguous_format)
    batches = DataLoader(dataset, batch_size=16, num_workers=workers, persistent_workers=workers > 0)
    return list(loader.DeviceBatches(batches, torch.device("cpu"), to_input))


def test_device_batches_keep_the_order_and_equal_the_host_path():
    device, host = digits_batches("device", workers=2), digits_batches("host", workers=0)
    assert [len(labels) for _, labels in device] == [16, 16, 16, 16, 6]
    for (x, y), (hx, hy) in zip(device, host, strict=True):
        assert torch.equal(y, hy) and torch.equal(x, hx)


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(12, 7)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_collected_groups_equal_batch_by_batch_results():
    runner, batches = Runner(Linear(), "cpu", topk=3), torch.randn(5, 4, 3, 2, 2).unbind()
    one_by_one = [runner.collect([runner(x)]) for x in batches]
    topk, confidence, seconds = runner.collect([runner(x) for x in batches])
    assert np.array_equal(topk, np.concatenate([t for t, _, _ in one_by_one]))
    assert np.array_equal(confidence, np.concatenate([c for _, c, _ in one_by_one]))
    assert len(seconds) == 5 and all(s > 0 for s in seconds)
    assert runner.collect_every == 1  # on CPU results are host tensors already: nothing to gain by waiting


def compile_count(pad_to: int | None) -> tuple[int, np.ndarray]:
    """How often dynamo compiled the model over batches of 8, 8 and a short 3, and the predictions."""
    compiled = []

    def counting_backend(graph, example_inputs):
        compiled.append([tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)])
        return graph.forward

    torch._dynamo.reset()
    runner = Runner(Linear(), "cpu", compile=True, pad_to=pad_to, topk=3, compile_backend=counting_backend)
    outputs = [runner(x) for x in torch.randn(19, 3, 2, 2).split(8)]
    return len(compiled), runner.collect(outputs)[0]


def test_compile_pads_the_last_batch_instead_of_recompiling():
    padded, padded_topk = compile_count(pad_to=8)
    unpadded, unpadded_topk = compile_count(pad_to=None)
    assert unpadded == 2  # the premise: a short last batch recompiles inside the timed loop
    assert padded == 1
    assert padded_topk.shape == (19, 3) and np.array_equal(padded_topk, unpadded_topk)  # the padding rows are dropped


@pytest.fixture
def restore_determinism():
    yield
    seed_everything(0, "cpu", deterministic=True)


def test_nondeterministic_allows_cudnn_autotuning(restore_determinism):
    seed_everything(0, "cpu", deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    seed_everything(0, "cpu")
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
