"""Names both planes use: the API group and kind, phases, labels, and the files on the results volume."""

GROUP, VERSION, KIND, PLURAL = "abtest.dev", "v1alpha1", "ABTest", "abtests"
API_VERSION = f"{GROUP}/{VERSION}"

PENDING, RUNNING, ANALYZING, SUCCEEDED, FAILED = "Pending", "Running", "Analyzing", "Succeeded", "Failed"
PHASES = (PENDING, RUNNING, ANALYZING, SUCCEEDED, FAILED)
TERMINAL_PHASES = (SUCCEEDED, FAILED)

LABEL_NAME, LABEL_MODEL, LABEL_ROLE = f"{GROUP}/name", f"{GROUP}/model", f"{GROUP}/role"
LABEL_UID = f"{GROUP}/uid"  # on Jobs the ABTest does not own itself (a JobSet's): which ABTest they are for
ANALYSIS = "analysis"  # the analysis Job's role and name suffix; reserved as a model name (CEL rule)

# Per model folder: predictions (or its shards) and metrics; per ABTest folder: the verdict and the report.
PREDICTIONS, METRICS = "predictions.parquet", "metrics.json"
RESULT, REPORT = "result.json", "report.html"

USER_ERROR_EXIT = 2  # `abtest` exits 2 on bad input: retrying cannot help
WRITE_FAILURE_EXIT = 3  # and 3 when its output cannot be written (volume full, read-only, not writable): neither can it

# What the analysis decides (spec.analysis.hypothesis, abtest analyze --hypothesis): design.md §5.
SUPERIORITY, NONINFERIORITY, EQUIVALENCE = "superiority", "noninferiority", "equivalence"
HYPOTHESES = (SUPERIORITY, NONINFERIORITY, EQUIVALENCE)
MCNEMAR_TESTS = ("auto", "exact", "midp", "chi2")

# Group-sequential tests (spec.analysis.sequential): the Lan-DeMets spending functions, and where each evaluator
# publishes the prefix of its predictions at look k of K (a complete model folder of its own: predictions + metrics).
OBRIEN_FLEMING, POCOCK = "obrienFleming", "pocock"
SPENDING_FUNCTIONS = (OBRIEN_FLEMING, POCOCK)
MAX_LOOKS = 20


def look_dir(look: int, looks: int) -> str:
    """The folder, inside a model's folder, holding its predictions and metrics of the first samples up to look ``look``."""
    return f"look-{look:05d}-of-{looks:05d}"


def look_sizes(n: int, looks: int) -> list[int]:
    """Samples analysed at each look: equal parts of the shared order, the last look all of them."""
    return [max(1, (k * n) // looks) for k in range(1, looks + 1)]


# Shards (spec.shardsPerModel): one model's evaluation split across N pods, part I covering a contiguous range
# of the shared order; its files carry the part in their names (design.md §4).
MAX_SHARDS = 64


def shard_file(stem: str, index: int, count: int, suffix: str) -> str:
    """``predictions-0000I-of-0000N.parquet`` / ``metrics-0000I-of-0000N.json``."""
    return f"{stem}-{index:05d}-of-{count:05d}{suffix}"


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, end) of part ``index`` of ``count`` over ``n`` samples: contiguous, sizes differing by at most one."""
    return (index * n) // count, ((index + 1) * n) // count


# What a model is (spec.models[].architecture): a timm or torchvision architecture by name, or an artefact file (its
# checkpoint) loaded by its own runtime. An artefact has no pretrained config, so the ABTest states its preprocessing.
TORCHSCRIPT, EXPORT, ONNX = "torchscript", "export", "onnx"
ARTEFACT_FORMATS = (TORCHSCRIPT, EXPORT, ONNX)
ARTEFACT_SETTINGS = ("inputSize", "interpolation", "mean", "std", "cropPct")  # what an artefact's model entry must set

# The precision a timm/torchvision model runs at (spec.models[].precision): fp16/bf16 cast its weights and inputs,
# int8-dynamic quantizes its linear layers with PyTorch's dynamic quantization (CPU only). Artefacts run as exported.
FP32, FP16, BF16, INT8_DYNAMIC = "fp32", "fp16", "bf16", "int8-dynamic"
PRECISIONS = (FP32, FP16, BF16, INT8_DYNAMIC)


def weights_cache_env(root: str, offline: bool = True) -> dict[str, str]:
    """The environment that points timm (the Hugging Face hub cache, ROOT/huggingface/hub) and torchvision (torch hub,
    ROOT/torch/hub/checkpoints) at a weights cache folder: a model pod with spec.weightsCache gets it with both hubs
    offline; `abtest cache-weights` fills the folder with them online."""
    env = {"HF_HOME": f"{root}/huggingface", "TORCH_HOME": f"{root}/torch"}
    return {**env, "HF_HUB_OFFLINE": "1"} if offline else env
