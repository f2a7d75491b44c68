.PHONY: quickstart test sync-crd
quickstart:  ## set up, train the example checkpoints, run the example A/B test locally
	bash hack/quickstart.sh
test:  ## every test tier (what CI runs)
	bash hack/test.sh
sync-crd:  ## copy crds/abtest.yaml into the chart (a test checks they are identical)
	cp crds/abtest.yaml charts/abtest-operator/files/crds/abtest.yaml
