package bfd

import "testing"

// Which falls are the path failing, and so reset BGP: this side's detection time, or
// the peer's Down for a fault it found; not the peer's AdminDown, nor its re-creating
// its side of the session (as FRR does when a BGP session comes up).
func TestChangeFailed(t *testing.T) {
	for _, tc := range []struct {
		c    Change
		want bool
	}{
		{Change{From: Up, To: Down, Diag: DiagDetectionExpired}, true},
		{Change{From: Up, To: Down, Diag: DiagNeighborDown, PeerDiag: DiagDetectionExpired}, true},
		{Change{From: Up, To: Down, Diag: DiagNeighborDown, PeerDiag: 5}, true}, // path down
		{Change{From: Up, To: Down, Diag: DiagNeighborDown, PeerDiag: DiagNone}, false},
		{Change{From: Up, To: Down, Diag: DiagNeighborDown, PeerDiag: DiagNeighborDown}, false},
		{Change{From: Up, To: Down, Diag: DiagNeighborDown, PeerAdminDown: true, PeerDiag: DiagAdminDown}, false},
		{Change{From: Init, To: Down, Diag: DiagDetectionExpired}, false}, // never was up
		{Change{From: Down, To: Up}, false},
	} {
		if got := tc.c.Failed(); got != tc.want {
			t.Errorf("%+v: Failed() = %v, want %v", tc.c, got, tc.want)
		}
	}
}
