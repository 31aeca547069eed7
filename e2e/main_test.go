package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/heraldlb/herald/hack/cluster"
	"github.com/heraldlb/herald/hack/netlab"
	"github.com/heraldlb/herald/pkg/k8s/k8stest"
)

var speakerBin, controllerBin string

func TestMain(m *testing.M) {
	if name := os.Getenv("HERALD_E2E_SERVE"); name != "" {
		if err := cluster.Serve(name); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	dir, err := os.MkdirTemp("", "herald-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	speakerBin, controllerBin = filepath.Join(dir, "speaker"), filepath.Join(dir, "controller")
	// The speaker runs speaker-bgp, beside it, while its node has BGP peers.
	for bin, pkg := range map[string]string{speakerBin: "../speaker", filepath.Join(dir, "speaker-bgp"): "../speaker-bgp", controllerBin: "../controller"} {
		args := []string{"build", "-o", bin}
		if os.Getenv("HERALD_E2E_RACE") != "" {
			// Binaries built with the race detector, exiting on the first race (set
			// GORACE=halt_on_error=1), fail the tests that need them.
			args = append(args, "-race")
		}
		if out, err := exec.Command("go", append(args, pkg)...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	k8stest.StopShared(code != 0)
	os.RemoveAll(dir)
	os.Exit(code)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// benchSpeaker is the speaker binary a benchmark measures: HERALD_E2E_SPEAKER=PATH
// measures another one in the same lab (an older Herald, to compare).
func benchSpeaker() string {
	if alt := os.Getenv("HERALD_E2E_SPEAKER"); alt != "" {
		return alt
	}
	return speakerBin
}

// start brings up a cluster for a test, skipping it where namespaces cannot be made.
func start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	netlab.Require(t)
	return Start(t, speakerBin, opts)
}
