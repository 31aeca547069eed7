package k8s

import (
	"context"
	"errors"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
)

// Events records Kubernetes Events as one component. Nothing runs, and nothing is
// recorded, between NewEvents and Start; Shutdown ends what Start began.
type Events struct {
	client    *Core
	component string

	mu          sync.Mutex
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	sink        *trackedSink
}

// sink writes Events through a Core client, as client-go's typed EventSinkImpl does
// through the clientset: each in the namespace of the Event itself.
type sink struct{ client *Core }

func (s sink) Create(e *corev1.Event) (*corev1.Event, error) {
	out := e.DeepCopy()
	return out, s.client.Create(context.Background(), out)
}

func (s sink) Update(e *corev1.Event) (*corev1.Event, error) {
	out := e.DeepCopy()
	return out, s.client.Update(context.Background(), out)
}

func (s sink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	out := e.DeepCopy()
	return out, s.client.Patch(context.Background(), out, types.StrategicMergePatchType, data)
}

// trackedSink counts the API calls in flight, so Shutdown can wait for them: the
// broadcaster's own Shutdown cancels its workers but does not wait for them. Once
// closed it makes no more calls.
type trackedSink struct {
	record.EventSink

	mu       sync.Mutex
	closed   bool
	inFlight sync.WaitGroup
}

// errClosed is what a closed sink answers: the Event is dropped, as at any shutdown.
var errClosed = errors.New("event recorder shut down")

func (s *trackedSink) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.inFlight.Add(1)
	return true
}

// close refuses further calls and waits for those in flight.
func (s *trackedSink) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.inFlight.Wait()
}

func (s *trackedSink) Create(e *corev1.Event) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errClosed
	}
	defer s.inFlight.Done()
	return s.EventSink.Create(e)
}

func (s *trackedSink) Update(e *corev1.Event) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errClosed
	}
	defer s.inFlight.Done()
	return s.EventSink.Update(e)
}

func (s *trackedSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errClosed
	}
	defer s.inFlight.Done()
	return s.EventSink.Patch(e, data)
}

// NewEvents returns an Event recorder for component.
func NewEvents(client *Core, component string) *Events {
	return &Events{client: client, component: component}
}

// Start begins delivering recorded Events to the API server.
func (e *Events) Start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broadcaster != nil {
		return
	}
	e.broadcaster = record.NewBroadcaster()
	e.sink = &trackedSink{EventSink: sink{e.client}}
	e.broadcaster.StartRecordingToSink(e.sink)
	e.recorder = e.broadcaster.NewRecorder(scheme, corev1.EventSource{Component: e.component})
}

// Shutdown stops delivering, after what was recorded so far has been handed on, and
// waits for the API calls in flight. Call it once nothing records any more.
func (e *Events) Shutdown() {
	e.mu.Lock()
	b, sink := e.broadcaster, e.sink
	e.broadcaster, e.recorder, e.sink = nil, nil, nil
	e.mu.Unlock()
	if b != nil {
		b.Shutdown()
		sink.close()
	}
}

func (e *Events) rec() record.EventRecorder {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.recorder
}

// Event records an Event on obj; before Start or after Shutdown it does nothing.
func (e *Events) Event(obj runtime.Object, eventType, reason, message string) {
	if r := e.rec(); r != nil {
		r.Event(obj, eventType, reason, message)
	}
}

// Eventf is Event with a format.
func (e *Events) Eventf(obj runtime.Object, eventType, reason, format string, args ...any) {
	if r := e.rec(); r != nil {
		r.Eventf(obj, eventType, reason, format, args...)
	}
}
