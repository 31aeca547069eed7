// Package leaktest checks that a component's Run has ended every goroutine it started by
// the time it returns: it looks at every goroutine at once, without waiting (a goroutine
// still ending after Run returned is exactly the defect), and reports those running code
// of the given packages.
package leaktest

import (
	"runtime"
	"strings"
	"testing"
)

// Check fails t if, right now, a goroutine other than the caller's runs code whose
// package path starts with one of pkgs (for example "github.com/heraldlb/herald/pkg/speaker.").
func Check(t testing.TB, pkgs ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := strings.Split(string(buf), "\n\n")
	for _, s := range stacks[1:] { // the first is the caller's
		if strings.Contains(s, "testing.tRunner(") || strings.Contains(s, "testing.(*M).Run(") {
			continue // the test binary's own: its main goroutine, and running tests
		}
		for _, p := range pkgs {
			if strings.Contains(s, p) {
				t.Errorf("a goroutine outlives its component's Run:\n%s", s)
				break
			}
		}
	}
}
