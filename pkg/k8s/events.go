package k8s

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Events records Kubernetes Events as one component. Nothing runs, and nothing is
// recorded, between NewEvents and Start; Shutdown ends what Start began.
type Events struct {
	client    kubernetes.Interface
	component string

	mu          sync.Mutex
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
}

// NewEvents returns an Event recorder for component.
func NewEvents(client kubernetes.Interface, component string) *Events {
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
	e.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: e.client.CoreV1().Events("")})
	e.recorder = e.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: e.component})
}

// Shutdown stops delivering, after what was recorded so far has been handed on, and
// waits for the delivery goroutines. Call it once nothing records any more.
func (e *Events) Shutdown() {
	e.mu.Lock()
	b := e.broadcaster
	e.broadcaster, e.recorder = nil, nil
	e.mu.Unlock()
	if b != nil {
		b.Shutdown()
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
