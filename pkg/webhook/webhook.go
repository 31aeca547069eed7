// Package webhook refuses a broken or address-stealing Herald ConfigMap at the door: a
// validating admission webhook, served by every controller replica, that runs the same
// rule the controller applies (config.Admit) on the ConfigMap being written, so that
// `kubectl apply` fails at once with the field-path message. It also makes and rotates
// its own serving certificate, kept in a Secret that every replica reads, and writes the
// certificate authority into the ValidatingWebhookConfiguration.
package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/heraldlb/herald/pkg/config"
	"github.com/heraldlb/herald/pkg/logging"
)

// Path is where the webhook answers.
const Path = "/validate-config"

// Validator answers AdmissionReviews for the ConfigMap Namespace/Name.
type Validator struct {
	Namespace, Name, Key string
	// Held returns the addresses Services hold now (from their statuses).
	Held func() []config.Held
	Log  *slog.Logger
}

// maxBody bounds what a request may send: a ConfigMap is at most 1 MiB.
const maxBody = 3 << 20

// ServeHTTP decodes the review, decides and answers.
func (v *Validator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := logging.OrDiscard(v.Log)
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	resp := v.Review(review.Request)
	if !resp.Allowed {
		log.Info("refused a configuration at admission", "configMap", v.Namespace+"/"+v.Name, "user", review.Request.UserInfo.Username, "err", resp.Result.Message)
	}
	review.Response = resp
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
}

// Review decides one request: only a create or update of Herald's ConfigMap is checked;
// everything else is allowed.
func (v *Validator) Review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Kind != "ConfigMap" || req.Namespace != v.Namespace || req.Name != v.Name ||
		(req.Operation != admissionv1.Create && req.Operation != admissionv1.Update) {
		return allow
	}
	var cm corev1.ConfigMap
	if err := json.Unmarshal(req.Object.Raw, &cm); err != nil {
		return deny(req, fmt.Sprintf("cannot read the ConfigMap: %v", err))
	}
	text, ok := cm.Data[v.Key]
	if !ok {
		return deny(req, fmt.Sprintf("ConfigMap %s/%s has no key %q: Herald would have no configuration", v.Namespace, v.Name, v.Key))
	}
	var held []config.Held
	if v.Held != nil {
		held = v.Held()
	}
	cfg, err := config.Admit([]byte(text), held)
	if err != nil {
		var r *config.Refused
		if errors.As(err, &r) {
			return deny(req, "Herald refuses this configuration: "+err.Error())
		}
		return deny(req, "Herald's configuration is invalid: "+err.Error())
	}
	// What Herald accepts but does differently, kubectl prints as "Warning: ...".
	for _, w := range cfg.Warnings {
		allow.Warnings = append(allow.Warnings, "Herald: "+w.String())
	}
	return allow
}

func deny(req *admissionv1.AdmissionRequest, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusUnprocessableEntity, Reason: metav1.StatusReasonInvalid, Message: msg,
	}}
}

// Registration is the ValidatingWebhookConfiguration config/controller.yaml installs,
// called name, for the ConfigMap "config" in namespace, with the webhook at url instead
// of behind a Service (the lab and the tests run the controller outside the cluster).
func Registration(name, namespace, url string) *admissionregistrationv1.ValidatingWebhookConfiguration {
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name: "config.herald.dev", AdmissionReviewVersions: []string{"v1"},
			SideEffects:   ptr.To(admissionregistrationv1.SideEffectClassNone),
			FailurePolicy: ptr.To(admissionregistrationv1.Ignore), TimeoutSeconds: ptr.To[int32](5),
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": namespace}},
			MatchConditions:   []admissionregistrationv1.MatchCondition{{Name: "herald-config-only", Expression: "object.metadata.name == 'config'"}},
		}},
	}
}
