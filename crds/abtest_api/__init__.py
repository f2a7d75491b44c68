"""abtest's API layer: what the control plane and the data plane agree on, importable by both.

Imported as ``abtest_api``. It holds the CRD (``abtest.yaml``, the single source) and, beside it, its
Python mirror: constants (group, kind, phases, labels, file names), the error users see, the
``status.result`` projection and its validation, and the evaluate contract. It imports neither
plane, nor torch, nor kopf.
"""
