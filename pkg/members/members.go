package members

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/heraldlb/herald/pkg/logging"
)

// Config configures a member.
type Config struct {
	Name          string // this member's name: the node name
	BindAddr      string // default 0.0.0.0
	BindPort      int    // default 7946; 0 picks a free port
	AdvertiseAddr string // the address others reach us at; default: chosen by memberlist
	// Key encrypts gossip (AES, 16, 24 or 32 bytes); empty sends it in the clear.
	Key []byte
	// Meta is what this member tells the others about itself (at most
	// memberlist.MetaMaxSize bytes); see AliveMeta.
	Meta []byte
	// Peers returns addresses ("host:port") of speakers to join; called again every
	// RejoinInterval so that a speaker cut off and back merges again.
	Peers          func() []string
	RejoinInterval time.Duration // default 10s

	ProbeInterval time.Duration // default 200ms
	ProbeTimeout  time.Duration // default 100ms
	SuspicionMult int           // default 2
	LeaveTimeout  time.Duration // how long a graceful leave may take; default 2s

	// OnMessage receives what another member sent with Send or Broadcast (encrypted and
	// authenticated with Key when it is set). It must not block; msg is its own.
	OnMessage func(msg []byte)

	Logger *slog.Logger // nil discards
}

// Defaults for failure detection.
const (
	DefaultProbeInterval = 200 * time.Millisecond
	DefaultProbeTimeout  = 100 * time.Millisecond
	DefaultSuspicionMult = 2
)

// Members is this speaker's view of the live speakers.
type Members struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{}

	mu      sync.Mutex
	ml      *memberlist.Memberlist
	meta    []byte
	crashed bool // shut down without leaving (tests of hard failure)
}

// New returns a member that joins when Run is called.
func New(cfg Config) (*Members, error) {
	if cfg.Name == "" {
		return nil, errors.New("members: a member needs a name")
	}
	if len(cfg.Meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("members: metadata of %d bytes; at most %d", len(cfg.Meta), memberlist.MetaMaxSize)
	}
	if n := len(cfg.Key); n != 0 && n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("members: the gossip key is %d bytes; it must be 16, 24 or 32", n)
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "0.0.0.0"
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.SuspicionMult == 0 {
		cfg.SuspicionMult = DefaultSuspicionMult
	}
	if cfg.RejoinInterval == 0 {
		cfg.RejoinInterval = 10 * time.Second
	}
	if cfg.LeaveTimeout == 0 {
		cfg.LeaveTimeout = 2 * time.Second
	}
	if cfg.Peers == nil {
		cfg.Peers = func() []string { return nil }
	}
	cfg.Logger = logging.OrDiscard(cfg.Logger)
	return &Members{cfg: cfg, log: cfg.Logger, changed: make(chan struct{}, 1), meta: cfg.Meta}, nil
}

// Changed receives a value after membership changes (coalesced: one value may stand for
// many changes).
func (m *Members) Changed() <-chan struct{} { return m.changed }

// Alive returns the names of the live members, this one included, sorted. Before Run has
// joined, it is just this member.
func (m *Members) Alive() []string {
	m.mu.Lock()
	ml := m.ml
	m.mu.Unlock()
	if ml == nil {
		return []string{m.cfg.Name}
	}
	var out []string
	for _, n := range ml.Members() {
		out = append(out, n.Name)
	}
	slices.Sort(out)
	return out
}

// AliveAddrs returns the live members' addresses by name, this one's included.
func (m *Members) AliveAddrs() map[string]net.IP {
	m.mu.Lock()
	ml := m.ml
	m.mu.Unlock()
	out := map[string]net.IP{}
	if ml == nil {
		return out
	}
	for _, n := range ml.Members() {
		out[n.Name] = n.Addr
	}
	return out
}

// AliveMeta returns the live members' metadata by name, this one's included.
func (m *Members) AliveMeta() map[string][]byte {
	m.mu.Lock()
	ml := m.ml
	m.mu.Unlock()
	if ml == nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		return map[string][]byte{m.cfg.Name: m.meta}
	}
	out := map[string][]byte{}
	for _, n := range ml.Members() {
		out[n.Name] = n.Meta
	}
	return out
}

// SetMeta changes what this member tells the others about itself and spreads it.
func (m *Members) SetMeta(meta []byte) error {
	if len(meta) > memberlist.MetaMaxSize {
		return fmt.Errorf("members: metadata of %d bytes; at most %d", len(meta), memberlist.MetaMaxSize)
	}
	m.mu.Lock()
	m.meta = meta
	ml := m.ml
	m.mu.Unlock()
	if ml == nil {
		return nil
	}
	if err := ml.UpdateNode(m.cfg.LeaveTimeout); err != nil {
		return fmt.Errorf("spread this speaker's metadata: %w", err)
	}
	return nil
}

// Started reports whether Run has started the member (and so joined or is joining).
func (m *Members) Started() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ml != nil
}

// Addr returns the address and port the member gossips on, once Run has started.
func (m *Members) Addr() (string, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ml == nil {
		return "", 0
	}
	n := m.ml.LocalNode()
	return n.Addr.String(), int(n.Port)
}

// Run joins the other speakers and stays a member until ctx ends, then leaves gracefully
// so that the others react at once.
func (m *Members) Run(ctx context.Context) error {
	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.Name
	c.BindAddr = m.cfg.BindAddr
	c.BindPort = m.cfg.BindPort
	c.AdvertisePort = m.cfg.BindPort
	if m.cfg.AdvertiseAddr != "" {
		c.AdvertiseAddr = m.cfg.AdvertiseAddr
	}
	c.ProbeInterval = m.cfg.ProbeInterval
	c.ProbeTimeout = m.cfg.ProbeTimeout
	c.SuspicionMult = m.cfg.SuspicionMult
	c.GossipInterval = 100 * time.Millisecond
	c.SecretKey = m.cfg.Key
	c.Events = &notifier{m: m}
	c.Delegate = (*delegate)(m)
	c.Logger = log.New(&logWriter{log: m.log}, "", 0)
	ml, err := memberlist.Create(c)
	if err != nil {
		return fmt.Errorf("start memberlist on %s:%d: %w", m.cfg.BindAddr, m.cfg.BindPort, err)
	}
	m.mu.Lock()
	m.ml = ml
	m.mu.Unlock()
	m.log.Info("memberlist started", "addr", net.JoinHostPort(ml.LocalNode().Addr.String(), strconv.Itoa(int(ml.LocalNode().Port))))

	m.join(ml)
	t := time.NewTicker(m.cfg.RejoinInterval)
	defer t.Stop()
	fast := time.NewTicker(time.Second) // until the first peer is found
	defer fast.Stop()
	for {
		select {
		case <-ctx.Done():
			m.mu.Lock()
			crashed := m.crashed
			m.mu.Unlock()
			if crashed {
				return nil
			}
			if err := ml.Leave(m.cfg.LeaveTimeout); err != nil {
				m.log.Warn("memberlist leave", "err", err)
			}
			return ml.Shutdown()
		case <-fast.C:
			if ml.NumMembers() > 1 {
				fast.Stop()
				continue
			}
			m.join(ml)
		case <-t.C:
			m.join(ml)
		}
	}
}

// join contacts the configured peers that are not members yet.
func (m *Members) join(ml *memberlist.Memberlist) {
	known := map[string]bool{}
	for _, n := range ml.Members() {
		known[n.Address()] = true
	}
	self := ml.LocalNode().Address()
	var todo []string
	for _, p := range m.cfg.Peers() {
		if p != self && !known[p] {
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return
	}
	if n, err := ml.Join(todo); err != nil && n == 0 {
		m.log.Debug("memberlist join found no peer yet", "peers", todo, "err", err)
	}
}

// crash stops answering at once without telling anyone, as a dead node does.
func (m *Members) crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.crashed = true
	if m.ml != nil {
		_ = m.ml.Shutdown()
	}
}

func (m *Members) notify() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// Send sends msg to the member called name, in one packet without retransmission (UDP: a
// LAN's loss is rare, and what is sent is also learned otherwise).
func (m *Members) Send(name string, msg []byte) error {
	m.mu.Lock()
	ml := m.ml
	m.mu.Unlock()
	if ml == nil {
		return errors.New("members: not started")
	}
	for _, n := range ml.Members() {
		if n.Name == name {
			return ml.SendBestEffort(n, msg)
		}
	}
	return fmt.Errorf("members: no member %q", name)
}

// Broadcast sends msg to every other member at once, as Send does.
func (m *Members) Broadcast(msg []byte) {
	m.mu.Lock()
	ml := m.ml
	m.mu.Unlock()
	if ml == nil {
		return
	}
	for _, n := range ml.Members() {
		if n.Name != m.cfg.Name {
			if err := ml.SendBestEffort(n, msg); err != nil {
				m.log.Debug("memberlist send", "member", n.Name, "err", err)
			}
		}
	}
}

// delegate is the memberlist delegate that hands out this member's metadata and passes
// on user messages; it carries no state.
type delegate Members

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.meta[:min(len(d.meta), limit)])
}
func (d *delegate) NotifyMsg(msg []byte) {
	if d.cfg.OnMessage != nil && len(msg) > 0 {
		d.cfg.OnMessage(slices.Clone(msg)) // memberlist reuses its buffer
	}
}
func (*delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (*delegate) LocalState(bool) []byte          { return nil }
func (*delegate) MergeRemoteState([]byte, bool)   {}

type notifier struct{ m *Members }

func (n *notifier) NotifyJoin(node *memberlist.Node) {
	n.m.log.Info("speaker joined", "member", node.Name)
	n.m.notify()
}

func (n *notifier) NotifyLeave(node *memberlist.Node) {
	n.m.log.Info("speaker left or failed", "member", node.Name)
	n.m.notify()
}

func (n *notifier) NotifyUpdate(*memberlist.Node) { n.m.notify() }

// logWriter turns memberlist's "[LEVEL] memberlist: text" lines into slog records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for tag, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[INFO]": slog.LevelInfo} {
		if strings.HasPrefix(line, tag) {
			level, line = l, strings.TrimSpace(strings.TrimPrefix(line, tag))
			break
		}
	}
	w.log.Log(context.Background(), level, strings.TrimPrefix(line, "memberlist: "))
	return len(p), nil
}
