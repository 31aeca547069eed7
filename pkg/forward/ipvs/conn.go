package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// batchBytes bounds the requests sent in one system call (the kernel refuses a
	// message larger than the socket's send buffer, 208 KiB by default).
	batchBytes = 48 << 10
	// receiveBuffer is asked for the socket: room for an error answer to every request
	// of a batch, so that none is dropped.
	receiveBuffer = 4 << 20
	// answerTimeout bounds each wait for the kernel's answer.
	answerTimeout = 10 * time.Second
)

// errLost says that the kernel's answers overran the receive buffer: whether the
// requests whose answer was lost took effect is unknown.
var errLost = errors.New("netlink answers lost (receive buffer overrun): outcome unknown")

// conn is a netlink socket that sends many requests in one system call and reads
// their answers in order. It is safe for concurrent use.
type conn struct {
	mu   sync.Mutex
	fd   int
	seq  uint32
	rbuf []byte
}

// dial opens a netlink socket of protocol proto (unix.NETLINK_GENERIC) in the calling
// thread's network namespace.
func dial(proto int) (*conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}
	// Errors come back without the request they answer (kernels before 4.3 lack this,
	// and then echo it: more bytes, same meaning).
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, receiveBuffer) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, receiveBuffer)
	}
	tv := unix.NsecToTimeval(answerTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("netlink socket timeout: %w", err)
		}
	}
	return &conn{fd: fd, rbuf: make([]byte, 64<<10)}, nil
}

func (c *conn) close() error { return unix.Close(c.fd) }

// request appends the i-th request with the given flags and sequence number to b.
type request func(b []byte, i int, flags uint16, seq uint32) ([]byte, error)

// do sends n requests, as few system calls as batchBytes allows, and returns the
// kernel's answer to each: nil when it succeeded (do returns nil when all did). Only
// the last request of a batch asks for an acknowledgement: the kernel answers a failed
// request whatever its flags and handles a batch's requests in order, so that
// acknowledgement comes after every error of the batch. A request that build cannot
// encode is not sent, and its error is build's. After a batch that fails as a whole (the
// socket failed, or no answer within answerTimeout), the batches left are not sent.
func (c *conn) do(n int, build request) []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	fail := func(i int, err error) {
		if errs == nil {
			errs = make([]error, n)
		}
		errs[i] = err
	}
	var (
		b     []byte
		index []int // request index by seq - first
		first uint32
	)
	for i := 0; i < n; {
		if c.seq > math.MaxUint32-batchBytes {
			c.seq = 0 // a batch's numbers never wrap
		}
		b, index, first = b[:0], index[:0], c.seq+1
		last := 0 // offset of the last request in b
		for ; i < n && len(b) < batchBytes; i++ {
			start := len(b)
			out, err := build(b, i, syscall.NLM_F_REQUEST, c.seq+1)
			if err != nil {
				fail(i, err)
				b = b[:start]
				continue
			}
			b, last = out, start
			c.seq++
			index = append(index, i)
		}
		if len(index) == 0 {
			continue
		}
		flags := binary.NativeEndian.Uint16(b[last+6:])
		binary.NativeEndian.PutUint16(b[last+6:], flags|syscall.NLM_F_ACK)
		answers, err := c.exchange(b, first, c.seq)
		for j, idx := range index {
			switch {
			case answers[j] != nil:
				fail(idx, answers[j])
			case err != nil:
				fail(idx, err)
			}
		}
		if err != nil && !errors.Is(err, errLost) {
			// The socket failed or the kernel did not answer within answerTimeout: the
			// batches left are not sent (each would wait as long), their requests fail
			// with the same error.
			for ; i < n; i++ {
				fail(i, fmt.Errorf("not sent: %w", err))
			}
		}
	}
	return errs
}

// exchange sends one batch whose requests are numbered first to last and reads the
// answers until the last one's: the errors by seq - first.
func (c *conn) exchange(b []byte, first, last uint32) ([]error, error) {
	answers := make([]error, last-first+1)
	if err := c.send(b); err != nil {
		return answers, err
	}
	var lost bool
	for {
		n, err := c.receive()
		switch {
		case errors.Is(err, unix.ENOBUFS):
			lost = true
			continue
		case err != nil:
			return answers, err
		}
		done := false
		err = messages(c.rbuf[:n], func(typ, _ uint16, seq uint32, payload []byte) error {
			if seq < first || seq > last || typ != unix.NLMSG_ERROR {
				return nil // an earlier exchange's, or not an answer
			}
			if errno := errnoOf(payload); errno != 0 {
				answers[seq-first] = errno
			}
			done = done || seq == last
			return nil
		})
		if err != nil {
			return answers, err
		}
		if done {
			if lost {
				return answers, errLost
			}
			return answers, nil
		}
	}
}

// dump sends one dump request (built with seq) and calls fn with the payload of each
// message of the answer.
func (c *conn) dump(build func(seq uint32) []byte, fn func(payload []byte) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	seq := c.seq
	if err := c.send(build(seq)); err != nil {
		return err
	}
	var first error // of fn: the answer is still read to its end
	for {
		n, err := c.receive()
		if err != nil {
			return err
		}
		done := false
		err = messages(c.rbuf[:n], func(typ, flags uint16, s uint32, payload []byte) error {
			if s != seq || done {
				return nil
			}
			switch typ {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				done = true
				if errno := errnoOf(payload); errno != 0 {
					return errno
				}
			default:
				if first == nil {
					first = fn(payload)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if done {
			return first
		}
	}
}

func (c *conn) send(b []byte) error {
	for {
		err := unix.Sendto(c.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				return fmt.Errorf("netlink send: %w", err)
			}
			return nil
		}
	}
}

func (c *conn) receive() (int, error) {
	for {
		n, _, err := unix.Recvfrom(c.fd, c.rbuf, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, fmt.Errorf("no netlink answer from the kernel within %s", answerTimeout)
		case errors.Is(err, unix.ENOBUFS):
			return 0, err
		case err != nil:
			return 0, fmt.Errorf("netlink receive: %w", err)
		case n > len(c.rbuf):
			return 0, fmt.Errorf("netlink answer of %d bytes overruns the buffer", n)
		}
		return n, nil
	}
}

// messages walks the netlink messages in b, calling fn with each one's type, flags,
// sequence number and payload. It fails on a message that overruns b.
func messages(b []byte, fn func(typ, flags uint16, seq uint32, payload []byte) error) error {
	for len(b) >= nlmsgHdrLen {
		n := int(binary.NativeEndian.Uint32(b))
		if n < nlmsgHdrLen || n > len(b) {
			return fmt.Errorf("netlink message of length %d in %d bytes", n, len(b))
		}
		if err := fn(binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint16(b[6:]), binary.NativeEndian.Uint32(b[8:]), b[nlmsgHdrLen:n]); err != nil {
			return err
		}
		b = b[min(align4(n), len(b)):]
	}
	return nil
}

// errnoOf reads the error of an NLMSG_ERROR or NLMSG_DONE payload (0: none).
func errnoOf(payload []byte) syscall.Errno {
	if len(payload) < 4 {
		return 0
	}
	if e := int32(binary.NativeEndian.Uint32(payload)); e < 0 {
		return syscall.Errno(-e)
	}
	return 0
}
