// Package helm runs the helm command on Herald's chart (charts/herald): the chart's tests
// render it, the lab and the end-to-end tests install it as an admin would. The command
// is Helm v4, built from its Go module by hack/build-helm.sh into the cache beside the
// control plane, so that Helm's dependencies never enter Herald's go.mod or binaries.
package helm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

// Release is the name Herald's release has wherever this repository installs it.
const Release = "herald"

// Binary returns the path of the helm command: $HERALD_HELM when set, else the one
// hack/build-helm.sh built (building it on first use, a few minutes once).
func Binary(ctx context.Context) (string, error) {
	if p := os.Getenv("HERALD_HELM"); p != "" {
		return p, nil
	}
	root, err := k8stest.ModuleRoot()
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "build-helm.sh"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build helm: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// Chart returns the directory of Herald's chart in the repository at root.
func Chart(root string) string { return filepath.Join(root, "charts", "herald") }

// Env is the environment that keeps helm's cache, configuration and data (repositories,
// plugins, registry logins) in home rather than in the user's own directories.
func Env(home string) []string {
	return []string{
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
	}
}

// InstallArgs are helm's arguments that install or upgrade Herald's chart at chart, the
// release recorded in namespace default (the chart makes and owns herald-system itself,
// labelled for Pod Security), with the values files given.
func InstallArgs(chart string, valuesFiles ...string) []string {
	args := []string{"upgrade", "--install", Release, chart, "--namespace", "default"}
	for _, f := range valuesFiles {
		args = append(args, "--values", f)
	}
	return args
}

// UninstallArgs are helm's arguments that remove Herald's release. It returns once the
// deletions are requested; the namespace herald-system then goes, with what the
// controller made in it, as soon as the cluster's namespace controller has emptied it.
func UninstallArgs() []string {
	return []string{"uninstall", Release, "--namespace", "default"}
}
