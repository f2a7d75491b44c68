#!/usr/bin/env bash
# Try abtest on kind with the CPU-fallback image (needs docker, kind, helm, kubectl; not runnable
# on the project's CI machine, which has no Docker engine).
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=abtest
kind create cluster --name "$cluster"
docker build --target evaluator-cpu -t abtest/evaluator:cpu .
docker build --target operator -t abtest/operator:dev .
kind load docker-image --name "$cluster" abtest/evaluator:cpu abtest/operator:dev
helm install abtest charts/abtest-operator -n abtest-system --create-namespace \
  --set operator.image.repository=abtest/operator,operator.image.tag=dev,operator.image.pullPolicy=Never \
  --set evaluator.image.repository=abtest/evaluator,evaluator.image.tag=cpu,evaluator.image.pullPolicy=Never
kubectl -n abtest-system rollout status deploy/abtest-abtest-operator --timeout=120s

# Checkpoints: train them locally, then copy them onto a claim through a short-lived pod.
source hack/setup.sh && python examples/train_digits.py
kubectl apply -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: abtest-models}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 100Mi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: abtest-results}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: models-loader}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 65532, fsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: sleep
      image: abtest/evaluator:cpu
      imagePullPolicy: Never
      command: [sleep, "600"]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: models, mountPath: /models}]
  volumes: [{name: models, persistentVolumeClaim: {claimName: abtest-models}}]
YAML
kubectl wait --for=condition=Ready pod/models-loader --timeout=120s
kubectl cp examples/checkpoints models-loader:/models/checkpoints
kubectl delete pod models-loader --wait=false
# kind has one node and ReadWriteOnce storage: every pod lands on that node, so RWO is enough.
sed 's/device: auto/device: cpu/' examples/abtest-digits.yaml | kubectl apply -f -
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded abtest/digits-resnet-vs-vit --timeout=600s
kubectl get abtests
