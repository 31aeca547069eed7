package liveness

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"time"
)

// Beyond Config.Mesh peers a speaker no longer connects to every other: it watches its
// Config.Monitors neighbours on each side of a ring of every speaker ordered by a hash of
// its name (so each speaker is watched by 2 × Monitors others and its cost stays the same
// however large the cluster), and a speaker that finds a neighbour dead reports it to all
// the others through memberlist (Config.Broadcast). A report is not believed: each
// receiver dials the reported speaker itself, and only a refused connection (its process
// is gone) or one that cannot be made at all (its node is gone) makes it dead there.
//
// The switch sits at 50 by default: up to there a full mesh costs each speaker at most 49
// connections and about 1,000 one-byte heartbeats a second each way, and every death is
// known first-hand within a round trip; past it, the mesh grows as N² across the cluster
// (about 125,000 connections at 500 speakers) while the ring stays at 2 × Monitors per speaker,
// for one more hop (the report) and one dial (the check) on every death.

// Defaults for the ring.
const (
	DefaultMesh     = 50
	DefaultMonitors = 3
)

// Messages carried through memberlist (Config.Broadcast, Config.Send, Deliver): a magic
// byte, a kind, the sender's name and the name it is about.
const (
	msgMagic   = 'L'
	msgDead    = 1 // the sender found about dead (a claim to verify)
	msgLeaving = 2 // the sender is leaving (about is the sender)
	msgAck     = 3 // the sender has acted on about's leaving
	msgBack    = 4 // the sender hears from about again (a claim to verify)
)

func encodeMsg(kind byte, from, about string) []byte {
	b := []byte{msgMagic, kind}
	b = binary.BigEndian.AppendUint16(b, uint16(len(from)))
	b = append(b, from...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(about)))
	return append(b, about...)
}

func decodeMsg(b []byte) (kind byte, from, about string, err error) {
	if len(b) < 2 || b[0] != msgMagic {
		return 0, "", "", errors.New("not a liveness message")
	}
	kind, b = b[1], b[2:]
	var names [2]string
	for i := range names {
		if len(b) < 2 {
			return 0, "", "", errors.New("liveness message cut short")
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n || n == 0 {
			return 0, "", "", fmt.Errorf("liveness message with a name of %d bytes in %d", n, len(b)-2)
		}
		names[i], b = string(b[2:2+n]), b[2+n:]
	}
	if len(b) != 0 || kind < msgDead || kind > msgBack {
		return 0, "", "", fmt.Errorf("liveness message of kind %d with %d bytes left", kind, len(b))
	}
	return kind, names[0], names[1], nil
}

// ring returns the peers self watches among all (self included or not) when they are
// more than mesh; nil means every peer (a full mesh). The relation is symmetric: a watches
// b exactly when b watches a, so every pair agrees on whether it holds a connection.
func ring(self string, all []string, mesh, monitors int) map[string]bool {
	if len(all) <= mesh+1 {
		return nil
	}
	names := slices.Clone(all)
	if !slices.Contains(names, self) {
		names = append(names, self)
	}
	pos := make(map[string]uint64, len(names))
	for _, n := range names {
		h := sha256.Sum256([]byte(n))
		pos[n] = binary.BigEndian.Uint64(h[:8])
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(pos[a], pos[b]), cmp.Compare(a, b))
	})
	i := slices.Index(names, self)
	w := map[string]bool{}
	for k := 1; k <= monitors && k < len(names); k++ {
		w[names[(i+k)%len(names)]] = true
		w[names[(i-k+len(names))%len(names)]] = true
	}
	delete(w, self)
	return w
}

// Deliver hands the detector a message another speaker sent through memberlist. A report
// of a death is checked before it is believed; a leave is taken only from the leaver.
// Malformed messages are dropped and counted.
func (d *Detector) Deliver(ctx context.Context, msg []byte) {
	kind, from, about, err := decodeMsg(msg)
	if err != nil {
		d.metrics.Dropped.Inc()
		d.log.Debug("liveness message dropped", "err", err)
		return
	}
	if from == d.cfg.Name {
		return
	}
	switch kind {
	case msgDead, msgBack:
		if about != d.cfg.Name {
			d.check(ctx, about)
		}
	case msgLeaving:
		if about != from {
			d.metrics.Dropped.Inc()
			return // a speaker says only that it leaves itself
		}
		d.mu.Lock()
		if _, known := d.peers[from]; known {
			d.markDeadLocked(from, Left, 0)
		}
		d.mu.Unlock()
	case msgAck:
		if about != d.cfg.Name {
			return
		}
		d.mu.Lock()
		if d.acks != nil {
			d.acks[from] = true
			select {
			case d.acked <- struct{}{}:
			default:
			}
		}
		d.mu.Unlock()
	}
}

// check finds out for itself whether name lives, when told it died (a report) or, if this
// speaker holds it dead, when told or due to ask whether it is back. A refused connection
// means its process is gone, one that cannot be made within the timeout that its node is
// gone (if this speaker hears from others); a connection made means it lives — and, for a
// return, one whose handshake proves the gossip key.
func (d *Detector) check(ctx context.Context, name string) {
	d.mu.Lock()
	defer d.mu.Unlock() // spawned under the lock: never after Run stopped waiting
	p := d.peers[name]
	if p == nil || d.leaving || !d.running || d.verifying[name] {
		return
	}
	_, dead := d.dead[name]
	if !dead && p.conn != nil && time.Since(p.heard) < d.cfg.Timeout {
		return // heard first-hand just now
	}
	d.verifying[name] = true
	p.checked = time.Now()
	addr := p.addr
	d.spawn(func() {
		defer func() {
			d.mu.Lock()
			delete(d.verifying, name)
			d.mu.Unlock()
		}()
		start := time.Now()
		dctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			if dead && d.handshake(conn, name) == nil {
				// Proven: back. The connection was only a question (no neighbours).
				_ = conn.SetWriteDeadline(time.Now().Add(d.cfg.Interval))
				_, _ = conn.Write([]byte{frameBye})
				d.mu.Lock()
				d.aliveLocked(name)
				d.mu.Unlock()
			}
			_ = conn.Close()
			return
		}
		why := Silent
		switch {
		case dead:
			return
		case errors.Is(err, syscall.ECONNREFUSED):
			why = Closed
		case ctx.Err() != nil:
			return
		}
		d.mu.Lock()
		if p := d.peers[name]; p != nil && (why == Closed || d.heardAnyLocked(time.Now())) {
			if p.conn == nil || time.Since(p.heard) > d.cfg.Timeout {
				d.markDeadLocked(name, why, time.Since(start))
			}
		}
		d.mu.Unlock()
	})
}

// reportLocked queues, when watching only neighbours, a report to the other speakers that
// a neighbour died (msgDead) or is back (msgBack); Run sends it.
func (d *Detector) reportLocked(kind byte, name string) {
	if d.cfg.Broadcast == nil || d.watched == nil {
		return
	}
	select {
	case d.reports <- report{kind, name}:
	default: // a burst beyond the queue: the others' own checks, and memberlist, remain
	}
}

type report struct {
	kind byte
	name string
}
