package k8s

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// RESTConfig loads a client configuration from a kubeconfig file, or from the Pod's
// service account when path is empty. qps <= 0 turns client-side rate limiting off and
// leaves protection to the API server's priority and fairness.
func RESTConfig(path string, qps float32, burst int) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %q: %w", path, err)
	}
	cfg.QPS, cfg.Burst = qps, burst
	if qps <= 0 {
		cfg.QPS = -1
	}
	cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	return cfg, nil
}

// RouteKlog sends client-go's own logging to logger.
func RouteKlog(logger *slog.Logger) {
	klog.SetSlogLogger(logger)
}
