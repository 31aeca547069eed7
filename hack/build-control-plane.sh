#!/usr/bin/env bash
# Builds the test cluster's Kubernetes binaries from their Go modules and caches them
# outside the work tree: etcd, and from k8s.io/kubernetes kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and a kubectl of the same
# release. Re-running it with the binaries present does nothing.
#
#   HERALD_CACHE   cache root (default: $XDG_CACHE_HOME/herald or ~/.cache/herald)
#
# Prints the directory holding the binaries on its last line.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
K8S_CMDS=(kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy)

cache=${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}
bin="$cache/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
mkdir -p "$bin"
# One build at a time: two runs at once (tests started side by side) would write the same
# temporary files.
exec 9>"$bin/.lock"
flock 9

log() { echo "build-control-plane: $*" >&2; }

build_etcd() {
	[ -x "$bin/etcd" ] && return
	log "building etcd $ETCD_VERSION (about 30 s)"
	local work
	work=$(mktemp -d)
	trap 'rm -rf "$work"' RETURN
	cat >"$work/main.go" <<'GO'
// Command etcd is etcd's own entry point, built from its server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
	(
		cd "$work"
		go mod init herald.local/etcd >/dev/null 2>&1
		go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
		go mod tidy >/dev/null
		CGO_ENABLED=0 go build -trimpath -o "$bin/etcd.tmp" .
	)
	mv "$bin/etcd.tmp" "$bin/etcd"
}

build_kubernetes() {
	local missing=() cmd
	for cmd in "${K8S_CMDS[@]}"; do
		[ -x "$bin/$cmd" ] || missing+=("$cmd")
	done
	[ ${#missing[@]} -eq 0 ] && return
	log "building ${missing[*]} $K8S_VERSION (about 10 minutes on 2 cores for all, once)"
	local work gomod
	work=$(mktemp -d)
	trap 'rm -rf "$work"' RETURN
	(
		cd "$work"
		go mod init herald.local/kubernetes >/dev/null 2>&1
		# k8s.io/kubernetes points each staging module at ./staging; pin every one of them
		# to its published release instead.
		gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
		[ -n "$gomod" ] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
		grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
			go mod edit -replace "$m=$m@$STAGING_VERSION"
		done
		go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
		for cmd in "${missing[@]}"; do
			go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" >/dev/null
		done
		major=${K8S_VERSION#v}; major=${major%%.*}
		minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
		pkg=k8s.io/component-base/version
		ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		for cmd in "${missing[@]}"; do
			log "  $cmd"
			CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
			mv "$bin/$cmd.tmp" "$bin/$cmd"
		done
	)
}

build_etcd
build_kubernetes
echo "$bin"
