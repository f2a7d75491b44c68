"""abtest control plane: manifest parsing, the planner, Kubernetes manifests, the kopf operator and the CLI.

Imported as ``abtest_operator`` (the folder name would shadow the standard library's ``operator``).
Nothing here imports torch.
"""
