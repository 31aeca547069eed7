{{/* The namespace of everything namespaced. */}}
{{- define "herald.namespace" -}}
{{ .Values.namespace.name }}
{{- end }}

{{/* Labels of every object: those config/ gives (part-of), and Helm's own. */}}
{{- define "herald.labels" -}}
app.kubernetes.io/part-of: herald
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Herald's image. */}}
{{- define "herald.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{ with .Values.image.digest }}@{{ . }}{{ end }}
{{- end }}

{{/* The image lines of a container. */}}
{{- define "herald.imageLines" -}}
image: {{ include "herald.image" . }}
{{- with .Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end }}

{{/* Flags that both the controller and the speaker take, where a value differs from
     their defaults (so the default install has the command lines of config/). */}}
{{- define "herald.commonArgs" -}}
{{- if ne .Values.namespace.name "herald-system" }}
- --config-namespace={{ .Values.namespace.name }}
{{- end }}
{{- with .Values.loadBalancerClass }}
- --load-balancer-class={{ . }}
{{- end }}
{{- end }}

{{/* Pod spec fields from values that both workloads take. */}}
{{- define "herald.podPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
