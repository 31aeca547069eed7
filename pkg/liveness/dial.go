package liveness

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
)

// verdict is what a failed dial says about the peer dialled.
type verdict uint8

const (
	// refused: the peer's kernel answered with a reset, so its node lives and no process
	// listens: the speaker is gone (Closed).
	refused verdict = iota + 1
	// unanswered: nothing came back within the time allowed (or the peer's host is
	// unreachable): the node may be dead or cut off, or a packet was lost. Only silence
	// judged over Timeout, with more than one try, makes this a death.
	unanswered
	// local: the dial failed on this node (out of descriptors or buffers, no source
	// address, its own link or route down): it says nothing of the peer.
	local
)

// judgeDial classifies a dial's error.
func judgeDial(err error) verdict {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return refused
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE), errors.Is(err, syscall.ENOBUFS),
		errors.Is(err, syscall.ENOMEM), errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN), errors.Is(err, syscall.EPERM),
		errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EAFNOSUPPORT), errors.Is(err, syscall.EINVAL):
		// EPERM/EACCES: a local firewall rule; ENETUNREACH/ENETDOWN: no route, i.e. this
		// node's own link is down.
		return local
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return unanswered
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return unanswered
	}
	return local // unknown: not evidence against the peer
}
