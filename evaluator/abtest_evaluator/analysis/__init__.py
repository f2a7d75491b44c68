"""The analysis, torch-free (it runs wherever numpy, scipy and statsmodels do, and the analysis Job never pays for
loading torch): the statistics (stats, sequential), the comparisons and their words (comparisons, verdict),
result.json's content (result), the runs that write it (driver), the report and its figures (report, plots),
whether the models ran together (concurrency), and the verdict written into the ABTest's status (publish)."""

from abtest_evaluator.analysis.driver import analyze, run, run_analysis, run_sequential
from abtest_evaluator.analysis.result import compare_models

__all__ = ["analyze", "compare_models", "run", "run_analysis", "run_sequential"]
