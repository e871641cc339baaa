# Triptych: the targets a newcomer and CI use. Everything expensive is cached outside the repo
# (~/.cache/triptych: Kubernetes binaries, images; pip's cache: wheels).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: help venv lint fmt test test-unit test-integration test-e2e test-keda test-argocd test-backends test-vllm bench demo cluster-up cluster-down \
        cluster-status images crds rbac verify deploy undeploy run

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

venv: ## create .venv with the operator, workers (and their ML stack) and dev tools
	@hack/venv

lint: venv ## ruff, mypy --strict, import-linter layering contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) hack/gen-crd --check
	$(PY) hack/gen-rbac --check

fmt: venv ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: ## every test: unit, integration (real servers, the local cluster), end-to-end
	@hack/venv
	$(PY) -m pytest tests

test-unit: venv ## fast tests without sockets or the cluster
	$(PY) -m pytest tests/unit

# The KEDA build (cold: minutes; then cached) runs first, where its progress shows; the test's fixtures start
# the cluster and KEDA if they are not running, and stop what they started.
test-keda: venv ## opt-in: a real KEDA (built once from Go modules) scales a role from a Prometheus trigger
	hack/build-tools keda >/dev/null
	TRIPTYCH_KEDA=1 $(PY) -m pytest tests/e2e/keda

# The Argo CD build (cold: 790 s here, on 2 cores shared with other builds; then cached) runs first, like
# KEDA's; the test's fixture starts Argo CD (hack/argocd up) if it is not running and stops it if it did.
test-argocd: venv ## opt-in: a real Argo CD (built once from Go modules) syncs a MultimodalDeployment from Git
	hack/build-tools argocd >/dev/null
	TRIPTYCH_ARGOCD=1 $(PY) -m pytest tests/e2e/argocd

# The SGLang and vLLM venvs (cold: 2-3 min and 6 GB each, torch with its CUDA libraries; then cached) are
# made first.
test-backends: venv ## opt-in: SGLang's own parser judges the operator's command lines; vLLM's renderer the frontend's prompts
	hack/backend-venv sglang >/dev/null
	hack/backend-venv vllm >/dev/null
	TRIPTYCH_BACKENDS=1 $(PY) -m pytest tests/integration/backends

# The vLLM image (cold: a few minutes and ~2 GB over the reference image; then cached) is built first.
test-vllm: venv ## opt-in: vLLM's CPU build serving every mode in the cluster, token-equal to one plain vLLM
	hack/images build worker-vllm
	TRIPTYCH_VLLM=1 $(PY) -m pytest tests/e2e/vllm

demo: ## bring up the local cluster and show it serving (see README)
	hack/demo

bench: venv ## benchmarks, each printing ratios against a baseline run side by side
	$(PY) -m tests.bench

cluster-up: ## build (once) and start the local cluster: control plane, one real node, kwok GPU nodes
	hack/cluster up

cluster-down: ## stop the local cluster; leaves no process, route or interface behind
	hack/cluster down

cluster-status: ## show the local cluster's components and nodes
	hack/cluster status

images: ## build every image in images/ (cached by content) and import it into the real node
	hack/images build all

# ---------------------------------------------------------------------------------------------- operator
KUBECONFIG_LOCAL = $(shell hack/cluster kubeconfig 2>/dev/null)
TOOLS = $(shell hack/build-tools 2>/dev/null)
KUBECTL = $(patsubst kubernetes=%,%,$(filter kubernetes=%,$(TOOLS)))/kubectl --kubeconfig $(KUBECONFIG_LOCAL)
HELM = $(patsubst helm=%,%,$(filter helm=%,$(TOOLS)))/helm --kubeconfig $(KUBECONFIG_LOCAL)
OPERATOR_NS := triptych-system

crds: venv ## regenerate the CRD from the spec models, and its copy in the chart
	$(PY) hack/gen-crd
	cp crds/*.yaml charts/triptych/crds/

rbac: venv ## regenerate the chart's ClusterRole from what the operator requests (kube.py and kopf's tables)
	$(PY) hack/gen-rbac

verify: venv ## fail if the committed CRD (or the chart's copy of it) differs from the spec models
	$(PY) hack/gen-crd --check
	@for f in crds/*.yaml; do cmp -s "$$f" "charts/triptych/crds/$$(basename $$f)" \
	  || { echo "charts/triptych/crds/$$(basename $$f) differs from $$f: run make crds"; exit 1; }; done

deploy: ## build the operator image and install the chart into triptych-system; waits until it is Ready
	hack/images build operator
	$(KUBECTL) apply --server-side -f charts/triptych/crds/
	$(HELM) upgrade --install triptych charts/triptych --namespace $(OPERATOR_NS) --create-namespace \
	  --wait --timeout 180s
	$(KUBECTL) -n $(OPERATOR_NS) rollout restart deployment/triptych-operator
	$(KUBECTL) -n $(OPERATOR_NS) rollout status deployment/triptych-operator --timeout=180s

undeploy: ## uninstall the chart (the CRDs stay, as Helm leaves crds/ alone, and so do the user's objects)
	$(HELM) uninstall triptych --namespace $(OPERATOR_NS) --wait --timeout 120s

run: venv ## the operator as a local process against the local cluster (pauses an in-cluster one: priority)
	$(KUBECTL) apply --server-side -f charts/triptych/crds/
	KUBECONFIG=$(KUBECONFIG_LOCAL) $(VENV)/bin/triptych-operator --peering triptych --priority 1
