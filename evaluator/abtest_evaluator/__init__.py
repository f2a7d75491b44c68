"""abtest data plane: datasets, models, the evaluation loop, telemetry, result files and the analysis.

Imported as ``abtest_evaluator``. Modules that need torch import it themselves; the resolvers,
result files and the analysis are torch-free.
"""
