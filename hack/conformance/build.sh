#!/usr/bin/env bash
# Builds Kubernetes' end-to-end suite (e2e.test) and the agnhost binary its specs run in
# pods, both from k8s.io/kubernetes at the release in this directory's go.mod (every
# staging module replaced by its published release), and caches them outside the work
# tree like the control plane. Re-running it with both present does nothing.
#
#   HERALD_CACHE   cache root (default: $XDG_CACHE_HOME/herald or ~/.cache/herald)
#
# Prints the directory holding the binaries on its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
AGNHOST_VERSION=2.66.1 # test/images/agnhost/VERSION at $K8S_VERSION; checked below

cache=${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}
bin="$cache/conformance/k8s-$K8S_VERSION"
mkdir -p "$bin"

log() { echo "build-conformance: $*" >&2; }

src=$(cd "$here" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
got=$(cat "$src/test/images/agnhost/VERSION")
[ "$got" = "$AGNHOST_VERSION" ] || { log "k8s.io/kubernetes $K8S_VERSION has agnhost $got, not $AGNHOST_VERSION"; exit 1; }

major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"

cd "$here"
if [ ! -x "$bin/e2e.test" ]; then
	log "building e2e.test $K8S_VERSION (test/e2e and test/e2e/network; many minutes on 2 cores, once)"
	start=$SECONDS
	CGO_ENABLED=0 go test -c -trimpath -ldflags "$ldflags" -o "$bin/e2e.test.tmp" .
	mv "$bin/e2e.test.tmp" "$bin/e2e.test"
	log "  e2e.test built in $((SECONDS - start)) s"
fi
if [ ! -x "$bin/agnhost-$AGNHOST_VERSION" ]; then
	log "building agnhost $AGNHOST_VERSION (static)"
	start=$SECONDS
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost
	mv "$bin/agnhost.tmp" "$bin/agnhost-$AGNHOST_VERSION"
	log "  agnhost built in $((SECONDS - start)) s"
fi
echo "$bin"
