// Package pkg_test holds checks on the package structure as a whole.
package pkg_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPurePackages checks that the pure core imports nothing that does I/O: it takes
// values and returns values, so it can be tested and fuzzed without a kernel or a cluster.
func TestPurePackages(t *testing.T) {
	forbiddenPrefixes := []string{
		"k8s.io/client-go", "github.com/vishvananda", "github.com/mdlayher", "github.com/osrg",
		"github.com/hashicorp/memberlist", "github.com/moby/ipvs", "github.com/google/nftables",
		"github.com/prometheus", "k8s.io/api", "k8s.io/apimachinery",
	}
	forbiddenDirect := map[string]bool{"os": true, "os/exec": true, "net": true, "net/http": true, "syscall": true, "golang.org/x/sys/unix": true, "log": true, "log/slog": true}
	for _, pkg := range []string{"./config", "./ipam", "./election", "./plan", "./relay"} {
		deps, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, d := range strings.Fields(string(deps)) {
			for _, f := range forbiddenPrefixes {
				if strings.HasPrefix(d, f) {
					t.Errorf("%s depends on %s", pkg, d)
				}
			}
		}
		direct, err := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, pkg).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range strings.Fields(string(direct)) {
			if forbiddenDirect[d] {
				t.Errorf("%s imports %s", pkg, d)
			}
		}
	}
}

// TestLeanSpeaker checks that the speaker binary links only the API groups it reads:
// client-go's typed clientset and informer factory register every group's types, which
// a speaker on every node would carry as resident memory (30 MiB of it, measured by
// BenchmarkSpeakerMemory). Package k8s and what the speaker imports must stay on
// k8s.Core. GoBGP and gRPC belong to the BGP process (speaker-bgp), which runs only on
// nodes with BGP peers: in the speaker they would cost every node 9 MiB.
func TestLeanSpeaker(t *testing.T) {
	deps, err := exec.Command("go", "list", "-deps", "../speaker").Output()
	if err != nil {
		t.Fatalf("go list -deps ../speaker: %v", err)
	}
	allowedGroups := map[string]bool{"k8s.io/api/core/v1": true, "k8s.io/api/discovery/v1": true}
	forbidden := []string{
		"k8s.io/client-go/kubernetes", "k8s.io/client-go/informers", "k8s.io/client-go/applyconfigurations", "k8s.io/client-go/tools/leaderelection",
		"k8s.io/client-go/tools/record", "k8s.io/apimachinery/pkg/util/strategicpatch", "github.com/google/gnostic-models", // client-go's Event recorder
		"github.com/osrg/gobgp", "google.golang.org/grpc", "github.com/spf13/viper",
	}
	n := 0
	for _, d := range strings.Fields(string(deps)) {
		n++
		if strings.HasPrefix(d, "k8s.io/api/") && !allowedGroups[d] {
			t.Errorf("the speaker links API group %s", d)
		}
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("the speaker links %s", d)
			}
		}
	}
	if n < 100 {
		t.Fatalf("go list -deps ../speaker listed %d packages: not the speaker's", n)
	}
}
