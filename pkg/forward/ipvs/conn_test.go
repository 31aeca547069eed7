package ipvs

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A kernel that does not answer a batch costs one wait for the answer, not one per
// batch: the batches after it are not sent, and every request left is failed with that
// batch's error. (A request whose header announces more bytes than it holds makes the
// kernel drop the rest of the message unanswered.)
func TestUnansweredBatchEndsTheExchange(t *testing.T) {
	c, err := dial(unix.NETLINK_GENERIC)
	if err != nil {
		t.Skipf("no netlink socket: %v", err)
	}
	defer c.close()
	wait := 200 * time.Millisecond
	tv := unix.NsecToTimeval(wait.Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	const n, size = 4, batchBytes + 16 // one request per batch
	start := time.Now()
	errs := c.do(n, func(b []byte, _ int, flags uint16, seq uint32) ([]byte, error) {
		m := make([]byte, size)
		binary.NativeEndian.PutUint32(m[0:], size+64) // more than it holds: dropped unanswered
		binary.NativeEndian.PutUint16(m[4:], unix.GENL_ID_CTRL)
		binary.NativeEndian.PutUint16(m[6:], flags)
		binary.NativeEndian.PutUint32(m[8:], seq)
		return append(b, m...), nil
	})
	took := time.Since(start)
	if len(errs) != n {
		t.Fatalf("errors %v, want one for each of %d requests", errs, n)
	}
	for i, err := range errs {
		if err == nil {
			t.Errorf("request %d: no error, though never answered", i)
		}
	}
	if took >= 2*wait {
		t.Errorf("%s for %d unanswered batches: the wait for an answer was paid per batch (%s each)", took.Round(time.Millisecond), n, wait)
	}
}
