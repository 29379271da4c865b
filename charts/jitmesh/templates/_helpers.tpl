{{/* Names and labels shared by every template. */}}
{{- define "jitmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "jitmesh.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "jitmesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "jitmesh.broker.name" -}}{{ include "jitmesh.fullname" . }}-broker{{- end -}}
{{- define "jitmesh.injector.name" -}}{{ include "jitmesh.fullname" . }}-injector{{- end -}}

{{- define "jitmesh.broker.url" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.broker.tls.enabled) (include "jitmesh.broker.name" .) .Release.Namespace (int .Values.broker.port) -}}
{{- end -}}

{{- define "jitmesh.broker.tlsSecret" -}}
{{- default (printf "%s-tls" (include "jitmesh.broker.name" .)) .Values.broker.tls.existingSecret -}}
{{- end -}}
