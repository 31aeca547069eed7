package k8stest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Binaries returns the directory holding etcd and kube-apiserver: $HERALD_CONTROL_PLANE_BIN
// when set, else what hack/build-control-plane.sh prints, building them on first use
// (about five minutes once, then cached outside the work tree).
func Binaries(ctx context.Context) (string, error) {
	if dir := os.Getenv("HERALD_CONTROL_PLANE_BIN"); dir != "" {
		return dir, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "build-control-plane.sh"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build the control plane: %w: %s", err, lastLines(stderr.String(), 10))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ModuleRoot finds Herald's module root above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/heraldlb/herald\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the Herald module: cannot find hack/build-control-plane.sh")
		}
		dir = parent
	}
}

var shared struct {
	once sync.Once
	cp   *ControlPlane
	dir  string
	err  error
	bins error
}

// Shared returns the control plane shared by the tests of one test binary, starting it on
// first use; the package's TestMain must call StopShared. It skips the test, saying why,
// only when the binaries cannot be built.
func Shared(t testing.TB) *ControlPlane {
	t.Helper()
	shared.once.Do(func() {
		ctx := context.Background()
		bin, err := Binaries(ctx)
		if err != nil {
			shared.bins = err
			return
		}
		shared.dir, shared.err = os.MkdirTemp("", "herald-controlplane-")
		if shared.err != nil {
			return
		}
		shared.cp, shared.err = Start(ctx, Options{Dir: shared.dir, BinDir: bin})
	})
	if shared.bins != nil {
		t.Skipf("no control plane: the etcd and kube-apiserver binaries cannot be built (%v); run `make control-plane`", shared.bins)
	}
	if shared.err != nil {
		t.Fatalf("start the control plane: %v", shared.err)
	}
	return shared.cp
}

// StopShared stops the shared control plane, if one was started, and removes its files
// unless keep is set (to read its logs after a failure).
func StopShared(keep bool) {
	if shared.cp != nil {
		shared.cp.Stop()
	}
	if shared.dir != "" && !keep {
		os.RemoveAll(shared.dir)
	}
}

// Main runs a test binary's tests with a shared control plane and stops it afterwards,
// keeping its logs when a test failed. Use it as TestMain: func TestMain(m *testing.M) { k8stest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if code != 0 && shared.dir != "" {
		fmt.Fprintf(os.Stderr, "control plane logs kept in %s\n", shared.dir)
	}
	StopShared(code != 0)
	os.Exit(code)
}
