package k8s

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Events records Kubernetes Events as component. Nothing is sent before Run starts.
type Events struct {
	broadcaster record.EventBroadcaster
	client      kubernetes.Interface
	Recorder    record.EventRecorder
}

// NewEvents returns an Event recorder for component; Run delivers what it records.
func NewEvents(client kubernetes.Interface, component string) *Events {
	b := record.NewBroadcaster()
	return &Events{
		broadcaster: b,
		client:      client,
		Recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component}),
	}
}

// Run delivers Events to the API server until ctx ends.
func (e *Events) Run(ctx context.Context) error {
	e.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: e.client.CoreV1().Events("")})
	<-ctx.Done()
	e.broadcaster.Shutdown()
	return nil
}
