#!/usr/bin/env bash
# Builds the helm command (Helm v4) from its Go module and caches it outside the work
# tree, beside the control plane: the chart's tests render charts/herald with it, and the
# lab installs Herald with it (make lab INSTALL=helm). A module of its own, so that Helm's
# dependencies never enter Herald's go.mod nor its binaries. Re-running it with the
# binary present does nothing.
#
#   HERALD_CACHE   cache root (default: $XDG_CACHE_HOME/herald or ~/.cache/herald)
#
# Prints the path of the helm binary on its last line.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v4.3.2}

cache=${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}
bin="$cache/helm/$HELM_VERSION"
mkdir -p "$bin"

if [ ! -x "$bin/helm" ]; then
	echo "build-helm: building helm $HELM_VERSION (about 5 CPU-minutes, once)" >&2
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	(
		cd "$work"
		go mod init herald.local/helm >/dev/null 2>&1
		go get "helm.sh/helm/v4@$HELM_VERSION" >/dev/null 2>&1
		go get "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >/dev/null
		pkg=helm.sh/helm/v4/internal/version
		CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X $pkg.version=$HELM_VERSION" -o "$bin/helm.tmp" helm.sh/helm/v4/cmd/helm
	)
	mv "$bin/helm.tmp" "$bin/helm"
fi
echo "$bin/helm"
