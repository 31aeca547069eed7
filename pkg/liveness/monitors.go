package liveness

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"maps"
	"slices"
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
// connections and about 1,000 heartbeats (27-byte authenticated frames) a second each way, and every death is
// known first-hand within a round trip; past it, the mesh grows as N² across the cluster
// (about 125,000 connections at 500 speakers) while the ring stays at 2 × Monitors per speaker,
// for one more hop (the report) and one dial (the check) on every death.

// Defaults for the ring.
const (
	DefaultMesh     = 50
	DefaultMonitors = 3
)

// Messages carried through memberlist (Config.Broadcast, Config.Send, Deliver): a magic
// byte, a version, a kind, the sender's name, the name it is about, the sender's clock
// (Unix nanoseconds, strictly increasing per sender) and a MAC of all of it under a key
// derived from the gossip key. memberlist's encryption keeps no replay state, so the
// receiver keeps it: a message is taken only when its MAC verifies, its time is within
// msgWindow of the receiver's clock, and it is newer than the last taken from the same
// sender of the same kind about the same speaker.
const (
	msgMagic   = 'L'
	msgVersion = 2
	msgDead    = 1 // the sender found about dead (a claim to verify)
	msgLeaving = 2 // the sender is leaving (about is the sender)
	msgAck     = 3 // the sender has acted on about's leaving
	msgBack    = 4 // the sender hears from about again (a claim to verify)

	// msgWindow bounds how far a message's clock may be from the receiver's: memberlist
	// delivers within a second or two, and nodes' clocks are kept within milliseconds.
	msgWindow = 10 * time.Second
	// maxFresh bounds the replay state (entries younger than msgWindow).
	maxFresh = 8192
	maxName  = 253 // a node name is a DNS subdomain
)

// msg is a message carried through memberlist.
type msg struct {
	kind        byte
	from, about string
	at          int64 // the sender's clock, Unix nanoseconds
}

// encodeMsg returns m's body (without the MAC).
func encodeMsg(m msg) []byte {
	b := []byte{msgMagic, msgVersion, m.kind}
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.from)))
	b = append(b, m.from...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.about)))
	b = append(b, m.about...)
	return binary.BigEndian.AppendUint64(b, uint64(m.at))
}

// sealMsg returns m with its MAC under key.
func sealMsg(key []byte, m msg) []byte {
	b := encodeMsg(m)
	h := hmac.New(sha256.New, key)
	h.Write(b)
	return h.Sum(b)[:len(b)+macLen]
}

// decodeMsg parses b; it does not check the MAC (openMsg does).
func decodeMsg(b []byte) (m msg, err error) {
	if len(b) < 3 || b[0] != msgMagic {
		return msg{}, drop(DropMalformed, "not a liveness message")
	}
	if b[1] != msgVersion {
		return msg{}, drop(DropMalformed, "liveness message version %d, want %d", b[1], msgVersion)
	}
	m.kind, b = b[2], b[3:]
	var names [2]string
	for i := range names {
		if len(b) < 2 {
			return msg{}, drop(DropTruncated, "liveness message cut short")
		}
		n := int(binary.BigEndian.Uint16(b))
		if n > maxName {
			return msg{}, drop(DropOversize, "liveness message with a name of %d bytes", n)
		}
		if len(b) < 2+n || n == 0 {
			return msg{}, drop(DropMalformed, "liveness message with a name of %d bytes in %d", n, len(b)-2)
		}
		names[i], b = string(b[2:2+n]), b[2+n:]
	}
	m.from, m.about = names[0], names[1]
	if len(b) < 8 {
		return msg{}, drop(DropTruncated, "liveness message without its time")
	}
	m.at, b = int64(binary.BigEndian.Uint64(b)), b[8:]
	if len(b) != 0 {
		return msg{}, drop(DropMalformed, "liveness message with %d bytes left", len(b))
	}
	if m.kind < msgDead || m.kind > msgBack {
		return msg{}, drop(DropType, "liveness message of kind %d", m.kind)
	}
	return m, nil
}

// openMsg checks b's MAC under key and parses it.
func openMsg(key, b []byte) (msg, error) {
	if len(b) < macLen {
		return msg{}, drop(DropTruncated, "liveness message of %d bytes", len(b))
	}
	body, sum := b[:len(b)-macLen], b[len(b)-macLen:]
	m, err := decodeMsg(body)
	if err != nil {
		return msg{}, err
	}
	h := hmac.New(sha256.New, key)
	h.Write(body)
	if !hmac.Equal(h.Sum(nil)[:macLen], sum) {
		return msg{}, drop(DropMAC, "liveness message from %q: MAC does not verify", m.from)
	}
	return m, nil
}

type freshKey struct {
	kind        byte
	from, about string
}

// freshLocked takes m's time as the newest of its sender, kind and subject, or says why
// not: a replay, or a message out of the window.
func (d *Detector) freshLocked(m msg, now time.Time) error {
	at := time.Unix(0, m.at)
	if at.Before(now.Add(-msgWindow)) || at.After(now.Add(msgWindow)) {
		return drop(DropStale, "liveness message from %q sent at %s, %s from now", m.from, at.UTC().Format(time.RFC3339Nano), now.Sub(at).Round(time.Millisecond))
	}
	k := freshKey{m.kind, m.from, m.about}
	if last, ok := d.fresh[k]; ok && m.at <= last {
		return drop(DropReplay, "liveness message from %q of %d, not after %d", m.from, m.at, last)
	}
	if len(d.fresh) >= maxFresh {
		oldest := now.Add(-msgWindow).UnixNano()
		maps.DeleteFunc(d.fresh, func(_ freshKey, at int64) bool { return at < oldest })
		if len(d.fresh) >= maxFresh {
			return drop(DropLimit, "%d liveness messages within %s", len(d.fresh), msgWindow)
		}
	}
	d.fresh[k] = m.at
	return nil
}

// sealLocked returns a message from this speaker, stamped with its clock.
func (d *Detector) sealLocked(kind byte, about string) []byte {
	at := max(time.Now().UnixNano(), d.sent+1)
	d.sent = at
	return sealMsg(d.msgKey, msg{kind: kind, from: d.cfg.Name, about: about, at: at})
}

func (d *Detector) seal(kind byte, about string) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sealLocked(kind, about)
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

// Deliver hands the detector a message another speaker sent through memberlist. It is
// taken only when authenticated and fresh (see msg); a report of a death is then checked
// before it is believed; a leave is taken only from the leaver, and only from one this
// speaker holds no live connection to (those say so on the connection). Refused messages
// are dropped and counted.
func (d *Detector) Deliver(ctx context.Context, b []byte) {
	m, err := openMsg(d.msgKey, b)
	if err == nil && m.from == d.cfg.Name {
		return // its own, back through memberlist
	}
	if err == nil && m.kind == msgLeaving && m.about != m.from {
		err = drop(DropSender, "%q says %q leaves", m.from, m.about)
	}
	if err == nil {
		d.mu.Lock()
		err = d.freshLocked(m, time.Now())
		d.mu.Unlock()
	}
	if err != nil {
		d.dropped(err, "memberlist")
		return
	}
	switch m.kind {
	case msgDead, msgBack:
		if m.about != d.cfg.Name {
			d.check(ctx, m.about)
		}
	case msgLeaving:
		d.mu.Lock()
		if p, known := d.peers[m.from]; known && !(p.conn != nil && time.Since(p.heard) < d.cfg.Timeout) {
			d.markDeadLocked(m.from, Left, 0)
		}
		d.mu.Unlock()
	case msgAck:
		if m.about != d.cfg.Name {
			return
		}
		d.mu.Lock()
		if d.acks != nil {
			d.acks[m.from] = true
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
// means its process is gone; connections that cannot be made, tried again and again (a
// lost SYN is sent again only after a second: each try is a new one) for the whole
// timeout, that its node is gone (if this speaker hears from others); an error of this
// node's own (out of descriptors, its link down) says nothing. A connection made means it
// lives — and, for a return, one whose handshake proves the gossip key.
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
		var last verdict
		tries := 0
		for ctx.Err() == nil {
			left := d.cfg.Timeout - time.Since(start)
			if left <= 0 || (dead && tries > 0) {
				break
			}
			conn, err := d.dialWithin(ctx, addr, min(left, 2*d.cfg.Interval))
			tries++
			if err == nil {
				if dead {
					if sess, herr := d.dialHandshake(conn, name); herr == nil {
						// Proven: back. The connection was only a question (no neighbours).
						_ = conn.SetWriteDeadline(time.Now().Add(d.cfg.Interval))
						_, _ = conn.Write(sess.out.seal(frameBye, nil))
						d.mu.Lock()
						d.aliveLocked(name)
						d.mu.Unlock()
					}
				}
				_ = conn.Close()
				return
			}
			if last = judgeDial(err); last != unanswered {
				break
			}
		}
		if dead && last == refused {
			d.refused(name) // its node lives: dead as Closed, no longer as Silent
		}
		if dead || ctx.Err() != nil {
			return
		}
		why := Silent
		switch {
		case last == refused:
			why = Closed
		case last == local:
			d.noteLocal(addr, name)
			return
		case tries < 2 || time.Since(start) < d.cfg.Timeout:
			return // not judged over the whole timeout
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
