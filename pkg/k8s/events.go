package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/reference"
	"k8s.io/utils/clock"
)

// Events records Kubernetes Events as one component, as client-go's record package does
// for the typed clientset: each Event is queued and written by one goroutine, and an
// Event repeating one written in the last ten minutes (same object, type, reason and
// message) raises that one's count instead of adding another. Its own, because
// client-go's recorder links the strategic-merge-patch machinery and OpenAPI models
// into every speaker for that one count.
//
// Like client-go's recorder it also has a spam filter: each object has a budget of
// eventBurst Events, refilled at one per eventRefill; an Event over budget is dropped,
// so that one object in a loop cannot flood the API server or crowd out the others.
//
// Nothing runs, and nothing is recorded, between NewEvents and Start; Shutdown ends
// what Start began.
type Events struct {
	// Clock stamps Events and refills budgets; nil is the real clock. Set it before Start.
	Clock clock.PassiveClock

	client    *Core
	component string

	mu      sync.Mutex
	queue   chan *corev1.Event // nil before Start and after Shutdown
	cancel  context.CancelFunc
	done    chan struct{}
	budgets map[string]budget // by object (eventObjectKey)

	seen map[string]written // the worker's: what was written, by aggregation key
}

// written is what the worker keeps of an Event it wrote, to raise its count on a
// repeat: not the Event the API server returned (its managedFields alone are half a
// kilobyte, and a speaker remembers one per Service it announces).
type written struct {
	name  string // in the Event's namespace, which is part of the aggregation key
	count int32
	last  time.Time
}

// budget is what an object may still record: tokens, as of last.
type budget struct {
	tokens float64
	last   time.Time
}

const (
	eventBurst     = 25               // Events an object may record at once, as client-go's spam filter allows
	eventRefill    = 5 * time.Minute  // then one more per this
	eventQueue     = 1000             // Events waiting beyond this are dropped, as client-go's recorder drops them
	eventSeenLimit = 4096             // aggregation keys remembered; beyond, forgotten all at once
	eventAggregate = 10 * time.Minute // a repeat within this raises the count
	eventMessage   = 1024             // the API server's limit on a message
	eventAttempts  = 3                // writes of one Event, when the API server is unavailable
	eventDrain     = 2 * time.Second  // how long Shutdown lets queued Events go out
)

// NewEvents returns an Event recorder for component.
func NewEvents(client *Core, component string) *Events {
	return &Events{client: client, component: component}
}

// Start begins delivering recorded Events to the API server.
func (e *Events) Start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.queue != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.queue, e.cancel, e.done = make(chan *corev1.Event, eventQueue), cancel, make(chan struct{})
	e.seen = map[string]written{}
	e.budgets = map[string]budget{}
	go e.deliver(ctx, e.queue, e.done)
}

func (e *Events) now() time.Time {
	if e.Clock == nil {
		return time.Now()
	}
	return e.Clock.Now()
}

// allowLocked spends one of the object's Events, refilling its budget for the time
// passed; false when none is left.
func (e *Events) allowLocked(key string, now time.Time) bool {
	b, ok := e.budgets[key]
	if !ok {
		if len(e.budgets) >= eventSeenLimit {
			e.forgetFullLocked(now)
		}
		b = budget{tokens: eventBurst, last: now}
	}
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(eventBurst, b.tokens+float64(elapsed)/float64(eventRefill))
		b.last = now
	}
	if b.tokens < 1 {
		e.budgets[key] = b
		return false
	}
	b.tokens--
	e.budgets[key] = b
	return true
}

// forgetFullLocked makes room among the budgets: first those refilled to the full
// burst by now (forgetting them changes nothing), then, if that is not enough, all.
func (e *Events) forgetFullLocked(now time.Time) {
	for k, b := range e.budgets {
		if b.tokens+float64(now.Sub(b.last))/float64(eventRefill) >= eventBurst {
			delete(e.budgets, k)
		}
	}
	if len(e.budgets) >= eventSeenLimit {
		clear(e.budgets)
	}
}

// eventObjectKey is what shares one budget: the component and the object.
func eventObjectKey(component string, o *corev1.ObjectReference) string {
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s\x00%s", component, o.APIVersion, o.Kind, o.Namespace, o.Name, o.UID)
}

// truncateMessage cuts message to the API server's limit, on a character boundary.
func truncateMessage(message string) string {
	if len(message) <= eventMessage {
		return message
	}
	cut := eventMessage - len("...")
	for cut > 0 && !utf8.RuneStart(message[cut]) {
		cut--
	}
	return message[:cut] + "..."
}

// Shutdown stops recording, lets what was recorded so far go out (for up to two
// seconds: an unavailable API server does not hold a stopping process), and waits for
// the API calls in flight. Call it once nothing records any more.
func (e *Events) Shutdown() {
	e.mu.Lock()
	q, cancel, done := e.queue, e.cancel, e.done
	e.queue = nil
	e.mu.Unlock()
	if q == nil {
		return
	}
	close(q)
	t := time.AfterFunc(eventDrain, cancel)
	<-done
	t.Stop()
	cancel()
}

// Event records an Event on obj; before Start or after Shutdown it does nothing.
func (e *Events) Event(obj runtime.Object, eventType, reason, message string) {
	ref, err := reference.GetReference(scheme, obj)
	if err != nil {
		return // not an object of the two groups: nothing to record it on
	}
	message = truncateMessage(message)
	now := metav1.NewTime(e.now())
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault // cluster-scoped objects' Events, where kubectl looks for them
	}
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", ref.Name, now.UnixNano()), Namespace: ns},
		InvolvedObject: *ref, Type: eventType, Reason: reason, Message: message,
		Source:         corev1.EventSource{Component: e.component},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: e.component,
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.queue == nil || !e.allowLocked(eventObjectKey(e.component, ref), now.Time) {
		return
	}
	select {
	case e.queue <- ev:
	default: // the API server is far behind; this one is lost, as with client-go's recorder
	}
}

// Eventf is Event with a format.
func (e *Events) Eventf(obj runtime.Object, eventType, reason, format string, args ...any) {
	e.Event(obj, eventType, reason, fmt.Sprintf(format, args...))
}

func (e *Events) deliver(ctx context.Context, q <-chan *corev1.Event, done chan<- struct{}) {
	defer close(done)
	for ev := range q {
		if ctx.Err() == nil {
			e.write(ctx, ev)
		}
	}
}

// aggregationKey is what makes two Events the same one, repeated.
func aggregationKey(ev *corev1.Event) string {
	o := ev.InvolvedObject
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s", ev.Source.Component, o.Kind, o.Namespace, o.Name, o.UID, ev.Type, ev.Reason, ev.Message)
}

// write creates ev, or raises the count of the same Event written lately.
func (e *Events) write(ctx context.Context, ev *corev1.Event) {
	key := aggregationKey(ev)
	if prior, ok := e.seen[key]; ok && ev.LastTimestamp.Sub(prior.last) < eventAggregate {
		count := prior.count + 1
		patch, _ := json.Marshal(map[string]any{"count": count, "lastTimestamp": ev.LastTimestamp})
		out := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: prior.name, Namespace: ev.Namespace}}
		err := e.retry(ctx, func(ctx context.Context) error { return e.client.Patch(ctx, out, types.MergePatchType, patch) })
		if err == nil {
			e.seen[key] = written{name: prior.name, count: count, last: ev.LastTimestamp.Time}
			return
		}
		if !apierrors.IsNotFound(err) {
			return
		}
		// Deleted meanwhile (Events expire after an hour): a new one.
	}
	if err := e.retry(ctx, func(ctx context.Context) error { return e.client.Create(ctx, ev.DeepCopy()) }); err != nil {
		return
	}
	if len(e.seen) >= eventSeenLimit {
		clear(e.seen)
	}
	e.seen[key] = written{name: ev.Name, count: ev.Count, last: ev.LastTimestamp.Time}
}

// retry calls f until it succeeds, fails for good (the API server refused the request
// itself), has been tried eventAttempts times, or ctx ends.
func (e *Events) retry(ctx context.Context, f func(context.Context) error) error {
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		call, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(call)
		cancel()
		if err == nil || attempt == eventAttempts || final(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// final says whether an error is the API server's answer to the request itself, which
// another attempt would get again.
func final(err error) bool {
	return apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) ||
		apierrors.IsForbidden(err) || apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) ||
		apierrors.IsMethodNotSupported(err) || apierrors.IsUnauthorized(err)
}
