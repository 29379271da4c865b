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

{{- /* The broker's store is SQLite unless a PostgreSQL URL is given (storeSecret or store). */ -}}
{{- define "jitmesh.broker.sqlite" -}}
{{- if and (not .Values.broker.storeSecret) (not (hasPrefix "postgres" .Values.broker.store)) -}}true{{- end -}}
{{- end -}}

{{- /* Render errors for broker settings that would lose keys and revocations. */ -}}
{{- define "jitmesh.broker.validate" -}}
{{- range $audience, $target := .Values.broker.databases.targets -}}
{{- range $key := list "admin_dsn_file" "tls.root_cert_file" -}}
{{- $path := ternary (dig "admin_dsn_file" "" $target) (dig "tls" "root_cert_file" "" $target) (eq $key "admin_dsn_file") -}}
{{- if $path -}}
{{- $mounted := false -}}
{{- range $.Values.broker.databases.adminSecrets -}}
{{- if hasPrefix (printf "/etc/jitmesh/db-admin/%s/" .) $path -}}{{- $mounted = true -}}{{- end -}}
{{- end -}}
{{- if not $mounted -}}
{{- fail (printf "broker.databases.targets.%s.%s=%q is in no mounted Secret: name its Secret in broker.databases.adminSecrets and use /etc/jitmesh/db-admin/<secret>/<key>" $audience $key $path) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if include "jitmesh.broker.sqlite" . -}}
{{- if gt (int .Values.broker.replicas) 1 -}}
{{- fail (printf "broker.replicas=%v with a SQLite store: SQLite has one writer and each replica would keep its own keys and revocations; use broker.replicas=1, or PostgreSQL for more replicas (broker.storeSecret: a Secret whose key `url` holds the postgresql:// URL)" .Values.broker.replicas) -}}
{{- end -}}
{{- if not .Values.broker.persistence.enabled -}}
{{- fail "broker.persistence.enabled=false with a SQLite store: the store would be an emptyDir, and a replaced broker pod would start with new keys and no revocations; keep broker.persistence.enabled=true (a PersistentVolumeClaim), or use PostgreSQL (broker.storeSecret)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
