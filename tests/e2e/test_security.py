"""RBAC and Pod Security against the real API server."""

import json
import re

import pytest
import yaml

from kube import apply, example_manifest, wait_phase

pytestmark = pytest.mark.e2e


def can_i(cluster, user: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False).stdout.strip()
    return out == "yes"


def test_operator_identity_is_least_privilege(cluster, operator):
    user = f"system:serviceaccount:abtest-system:{operator.sa}"
    assert can_i(cluster, user, "create", "jobs.batch", "-n", "anything")
    assert can_i(cluster, user, "patch", "abtests.abtest.dev", "--subresource=status", "-n", "anything")
    # the API server enforces OwnerReferencesPermissionEnforcement: owner references that block deletion need this
    assert can_i(cluster, user, "update", "abtests.abtest.dev", "--subresource=finalizers", "-n", "anything")
    for verb, resource in (
        ("get", "secrets"),
        ("list", "secrets"),
        ("delete", "jobs.batch"),
        ("create", "pods"),
        ("create", "pods/exec"),
        ("delete", "abtests.abtest.dev"),
        ("create", "clusterroles"),
    ):
        assert not can_i(cluster, user, verb, resource, "-A"), f"operator may {verb} {resource}"
    # and for real, with the token the operator runs on
    denied = cluster.kubectl("get", "secrets", "-A", kubeconfig=operator.kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_analysis_identity_may_only_patch_its_abtest_status(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    wait_phase(cluster, namespace.name, name, ("Succeeded",))
    user = f"system:serviceaccount:{namespace.name}:{name}-analysis"
    ns = ("-n", namespace.name)
    assert can_i(cluster, user, "patch", f"abtests.abtest.dev/{name}", "--subresource=status", *ns)
    assert can_i(cluster, user, "get", f"abtests.abtest.dev/{name}", "--subresource=status", *ns)
    assert not can_i(cluster, user, "patch", f"abtests.abtest.dev/{name}", *ns)  # not the spec
    assert not can_i(cluster, user, "patch", "abtests.abtest.dev/another", "--subresource=status", *ns)
    assert not can_i(cluster, user, "get", "secrets", *ns)
    assert not can_i(cluster, user, "create", "jobs.batch", *ns)


def test_restricted_pod_security_is_enforced_and_every_pod_admitted(cluster, namespace):
    labels = json.loads(cluster.kubectl("get", "namespace", namespace.name, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    plain = cluster.kubectl("run", "intruder", "-n", namespace.name, "--image=busybox", "--restart=Never", check=False)
    assert plain.returncode != 0 and 'violates PodSecurity "restricted:latest"' in plain.stderr, plain.stderr
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    apply(cluster, manifest)
    wait_phase(cluster, namespace.name, manifest["metadata"]["name"], ("Succeeded",))
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace.name, "-o", "json").stdout)["items"]
    assert len(pods) == 3 and all(p["status"]["phase"] == "Succeeded" for p in pods)
    warnings = cluster.kubectl("get", "events", "-n", namespace.name, "--field-selector", "reason=FailedCreate", check=False).stdout
    assert "forbidden" not in warnings


def test_rendered_chart_passes_a_server_side_dry_run(cluster, operator, binaries):
    from cluster.harness import helm_template

    docs = helm_template(binaries, "crds.enabled=false")
    out = cluster.kubectl(
        "apply", "--dry-run=server", "-n", "abtest-system", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs), check=False
    )
    assert out.returncode == 0, out.stderr
    # the chart is installed for real by the operator fixture, so the dry run updates rather than creates
    assert re.search(r"^deployment\.apps/abtest-abtest-operator (created|configured|unchanged) \(server dry run\)$", out.stdout, re.M), (
        out.stdout
    )


def test_watched_namespaces_confine_the_operator_to_them(cluster, binaries, namespace):
    """With operator.watchNamespaces the chart's rights are Roles in those namespaces: checked by the API server's RBAC
    for the ServiceAccount of a second, scoped release (its RBAC objects applied as rendered)."""
    from cluster.harness import helm_template

    docs = helm_template(binaries, "crds.enabled=false", f"operator.watchNamespaces={{{namespace.name}}}")
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    for d in rbac:  # a release of its own: rename what is cluster-wide or in the release namespace
        d["metadata"]["name"] = "scoped-abtest-operator"
        if d["kind"] == "ServiceAccount":
            d["metadata"]["namespace"] = "abtest-system"
        for subject in d.get("subjects", []):
            subject["name"] = "scoped-abtest-operator"
        if d.get("roleRef"):
            d["roleRef"]["name"] = "scoped-abtest-operator"
    out = cluster.kubectl("apply", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in rbac), check=False)
    assert out.returncode == 0, out.stderr
    user = "system:serviceaccount:abtest-system:scoped-abtest-operator"
    try:
        assert can_i(cluster, user, "create", "jobs.batch", "-n", namespace.name)
        assert can_i(cluster, user, "patch", "abtests.abtest.dev", "--subresource=status", "-n", namespace.name)
        assert can_i(cluster, user, "list", "customresourcedefinitions.apiextensions.k8s.io")
        assert not can_i(cluster, user, "create", "jobs.batch", "-n", "default")
        assert not can_i(cluster, user, "list", "abtests.abtest.dev", "-A")
        assert not can_i(cluster, user, "list", "namespaces")
    finally:
        cluster.kubectl("delete", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in rbac), check=False)
