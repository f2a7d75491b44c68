"""Names both planes use: the API group and kind, phases, labels, and the files on the results volume."""

GROUP, VERSION, KIND, PLURAL = "abtest.dev", "v1alpha1", "ABTest", "abtests"
API_VERSION = f"{GROUP}/{VERSION}"

PENDING, RUNNING, ANALYZING, SUCCEEDED, FAILED = "Pending", "Running", "Analyzing", "Succeeded", "Failed"
PHASES = (PENDING, RUNNING, ANALYZING, SUCCEEDED, FAILED)
TERMINAL_PHASES = (SUCCEEDED, FAILED)

LABEL_NAME, LABEL_MODEL, LABEL_ROLE = f"{GROUP}/name", f"{GROUP}/model", f"{GROUP}/role"
ANALYSIS = "analysis"  # the analysis Job's role and name suffix; reserved as a model name (CEL rule)

# Per model folder: predictions (or its shards) and metrics; per ABTest folder: the verdict and the report.
PREDICTIONS, METRICS = "predictions.parquet", "metrics.json"
RESULT, REPORT = "result.json", "report.html"

USER_ERROR_EXIT = 2  # `abtest` exits 2 on bad input: retrying cannot help

# What the analysis decides (spec.analysis.hypothesis, abtest analyze --hypothesis): design.md §5.
SUPERIORITY, NONINFERIORITY, EQUIVALENCE = "superiority", "noninferiority", "equivalence"
HYPOTHESES = (SUPERIORITY, NONINFERIORITY, EQUIVALENCE)
MCNEMAR_TESTS = ("auto", "exact", "midp", "chi2")
