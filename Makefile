# Herald. `make lab` shows it working; `make test` runs every test.
SHELL := /bin/bash
GO    ?= go
BIN   := bin
# How make lab installs Herald: kustomize (kubectl apply -k config/) or helm (charts/herald).
INSTALL ?= kustomize

.PHONY: all build image image-docker test vm-test bench lint fuzz deps control-plane helm lab lab-down lab-status conformance clean

all: build

build: ## the binaries, in bin/
	$(GO) build -trimpath -o $(BIN)/ ./controller ./speaker ./speaker-bgp ./kubectl-herald

image: ## the container image herald:dev for linux/amd64 and linux/arm64, without Docker: an OCI layout (an image index) in bin/herald:dev.tar
	$(GO) run ./hack/image -o $(BIN)

image-docker: ## the same image with a Docker engine (the Dockerfile)
	docker build -t herald:dev .

deps: ## Debian packages the tests and the lab need (installs only what is missing)
	hack/install-deps.sh

helm: ## the helm command (Helm v4), built once from its Go module into the cache, for the chart's tests and make lab INSTALL=helm
	hack/build-helm.sh >/dev/null

control-plane: ## etcd and the Kubernetes binaries (apiserver, controller manager, scheduler, kubelet, kube-proxy, kubectl), built once from their Go modules
	hack/build-control-plane.sh >/dev/null

test: deps control-plane helm ## every test: unit, fuzz seeds, property, real API server, namespaces (root)
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v /e2e)
	@# Tests that need ip_vs, inside a VM booted from Debian's cloud kernel (qemu, no KVM).
	$(GO) run ./hack/vm -icount -control-plane -bin ./speaker -run InVM -timeout 20m ./hack/vm ./pkg/forward/ipvs ./pkg/speaker ./e2e/linkcut
	@# The end-to-end tests alone, so that no other test's CPU load skews their failovers.
	$(GO) test -count=1 -timeout 30m ./e2e

vm-test: deps control-plane ## only the tests that run inside the ip_vs VM
	$(GO) run ./hack/vm -icount -control-plane -bin ./speaker -run InVM -timeout 20m ./hack/vm ./pkg/forward/ipvs ./pkg/speaker ./e2e/linkcut

bench: control-plane ## the benchmarks quoted in docs/measured.md
	$(GO) test -run '^$$' -bench Assign100k -benchmem -benchtime 5x ./pkg/ipam
	$(GO) test -run '^$$' -bench AssignWith100kInUse -benchmem ./pkg/ipam
	$(GO) test -run '^$$' -bench Services2000 -benchtime 1x ./pkg/controller
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/election
	$(GO) test -run '^$$' -bench DetectHardFailure -benchtime 20x ./pkg/members
	$(GO) test -run '^$$' -bench 'CrashDetection|PartitionHeal' -benchtime 10x ./pkg/liveness
	$(GO) test -run '^$$' -bench 'Failover|PartitionHeal|ThousandServicesMove|BGP|SpeakerMemory' -benchtime 1x ./e2e
	$(GO) run ./hack/vm -bench Program -count 3 -icount -timeout 40m ./pkg/forward/ipvs
	$(GO) run ./hack/vm -bench Connections -timeout 20m ./pkg/forward/ipvs

lint: ## formatting, vet, and the purity of the pure packages
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: the files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) test -count=1 -run TestPurePackages ./pkg

fuzz: ## a minute of fuzzing per parser
	$(GO) test ./pkg/config -run '^$$' -fuzz FuzzParse -fuzztime 60s

lab: deps control-plane $(if $(filter helm,$(INSTALL)),helm) ## bring up the lab and show Herald working (INSTALL=helm: with the Helm chart)
	$(GO) run ./hack/lab -install $(INSTALL) up

lab-status: ## what the lab runs now
	$(GO) run ./hack/lab status

conformance: ## Kubernetes' own LoadBalancers e2e specs (k8s.io/kubernetes v1.37.2) against the running lab; FOCUS='regexp' runs fewer, SKIP='regexp' leaves some out
	@dir=$$(hack/conformance/build.sh) && $(GO) run ./hack/lab conformance "$$dir" '$(FOCUS)' '$(SKIP)'

lab-down: ## stop the lab and remove everything it made
	$(GO) run ./hack/lab down

clean:
	rm -rf $(BIN)
