// Package leaktest checks that a component's Run has ended every goroutine it started by
// the time it returns. Goroutines running Herald's own code must be gone at once (one
// still ending after Run returned is exactly the defect); those of a library whose end
// Run cannot await (client-go's watch decoders and Event workers end a moment after
// their stream closes or their context is cancelled) get a short, bounded grace.
package leaktest

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// own is the prefix of Herald's packages, whose goroutines get no grace.
const own = "github.com/heraldlb/herald/"

// Grace bounds how long a library goroutine may take to end after Run returned.
const Grace = 2 * time.Second

// Check fails t if a goroutine other than the caller's runs code whose package path
// starts with one of pkgs (for example "github.com/heraldlb/herald/pkg/speaker."): right
// now for Herald's packages, after Grace for the others.
func Check(t testing.TB, pkgs ...string) {
	t.Helper()
	var strict, lenient []string
	for _, p := range pkgs {
		if strings.HasPrefix(p, own) {
			strict = append(strict, p)
		} else {
			lenient = append(lenient, p)
		}
	}
	for _, s := range running(strict) {
		t.Errorf("a goroutine outlives its component's Run:\n%s", s)
	}
	deadline := time.Now().Add(Grace)
	left := running(lenient)
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		left = running(lenient)
	}
	for _, s := range left {
		t.Errorf("a goroutine outlives its component's Run by more than %v:\n%s", Grace, s)
	}
}

// running returns the stacks of the goroutines, other than the caller's and the test
// binary's own, that run code of one of pkgs.
func running(pkgs []string) []string {
	if len(pkgs) == 0 {
		return nil
	}
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, s := range strings.Split(string(buf), "\n\n")[1:] { // the first is the caller's
		if strings.Contains(s, "testing.tRunner(") || strings.Contains(s, "testing.(*M).Run(") {
			continue // the test binary's own: its main goroutine, and running tests
		}
		for _, p := range pkgs {
			if strings.Contains(s, p) {
				found = append(found, s)
				break
			}
		}
	}
	return found
}
