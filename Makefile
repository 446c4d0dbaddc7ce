# Container images and Kubernetes manifests (deploy/); the fast check. Full tests: scripts/test.sh.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= videopanda-cluster
IMAGE_CUDA ?= videopanda-cluster-cuda
DOCKER ?= docker
KUBECTL ?= $(if $(wildcard .venv/bin/kubectl),.venv/bin/kubectl,kubectl)
OVERLAYS := cpu-dev gpu
MANIFESTS_DIR ?= build/k8s

.PHONY: check image image-cuda manifests validate-deploy

check:  ## ruff, mypy against its baseline, the tests not marked slow (scripts/check.sh)
	scripts/check.sh

image:  ## CPU image, $(IMAGE):$(VERSION)
	$(DOCKER) build -f deploy/docker/Dockerfile -t $(IMAGE):$(VERSION) .

image-cuda:  ## CUDA image, $(IMAGE_CUDA):$(VERSION)
	$(DOCKER) build -f deploy/docker/Dockerfile.cuda -t $(IMAGE_CUDA):$(VERSION) .

manifests:  ## render every overlay to $(MANIFESTS_DIR)/<overlay>.yaml
	@mkdir -p $(MANIFESTS_DIR)
	@for overlay in $(OVERLAYS); do \
	  $(KUBECTL) kustomize deploy/k8s/overlays/$$overlay > $(MANIFESTS_DIR)/$$overlay.yaml || exit 1; \
	  echo "$(MANIFESTS_DIR)/$$overlay.yaml"; \
	done

validate-deploy:  ## render and validate the overlays, check the images' and jobs' CLI use
	.venv/bin/python -m pytest -q tests/test_deploy.py
