"""What one evaluation is asked to do: the torch-free form of ``abtest evaluate``'s flags."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalConfig:
    model: str  # timm/NAME or torchvision/NAME
    dataset: str
    out: str
    split: str = "test"
    path: str | None = None
    dataset_class: str | None = None
    limit: int | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    num_classes: int | None = None  # default: the dataset's class count
    in_chans: int = 3
    seed: int = 42
    batch_size: int = 64
    workers: int = 2
    threads: int | None = None  # default: the cgroup CPU quota
    device: str = "auto"
    warmup_batches: int = 3
    amp: bool = False
    amp_dtype: str = "float16"
    channels_last: bool = False
    compile: bool = False
    input_size: int | None = None
    interpolation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_pct: float | None = None
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    pushgateway: str | None = None
    abtest: str = ""
    namespace: str = ""
    name: str = ""  # the model's name in the ABTest; defaults to the architecture
    progress: str = "auto"  # auto | bar | json | none
    labels: dict = field(default_factory=dict)

    @property
    def model_label(self) -> str:
        return self.name or self.model
