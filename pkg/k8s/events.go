package k8s

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Events records Kubernetes Events as one component.
type Events struct {
	broadcaster record.EventBroadcaster
	client      kubernetes.Interface
	Recorder    record.EventRecorder
}

// NewEvents returns an Event recorder for component; nothing is delivered before Start.
func NewEvents(client kubernetes.Interface, component string) *Events {
	b := record.NewBroadcaster()
	return &Events{
		broadcaster: b,
		client:      client,
		Recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component}),
	}
}

// Start begins delivering recorded Events to the API server.
func (e *Events) Start() {
	e.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: e.client.CoreV1().Events("")})
}

// Shutdown stops delivering, after what was recorded so far has been handed on. Call it
// once nothing records any more.
func (e *Events) Shutdown() { e.broadcaster.Shutdown() }
