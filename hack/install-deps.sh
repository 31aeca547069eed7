#!/usr/bin/env bash
# Installs the Debian packages Herald's tests and lab use, only those missing.
set -euo pipefail
pkgs=(iproute2 procps ca-certificates iputils-arping ndisc6 stress-ng curl frr bird2
	containerd runc containernetworking-plugins nftables conntrack util-linux # the cluster: a containerd per node, CNI, kube-proxy (nftables)
	qemu-system-x86 busybox-static cpio xz-utils kmod # the ip_vs VM (hack/vm)
	qemu-user-static) # runs the arm64 image's speaker (hack/images)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
