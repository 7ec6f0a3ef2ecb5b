{{/* Chart name. */}}
{{- define "breakglass.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-based, capped at 63 characters. */}}
{{- define "breakglass.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Standard labels. */}}
{{- define "breakglass.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "breakglass.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: breakglass
{{- end -}}

{{- define "breakglass.selectorLabels" -}}
app.kubernetes.io/name: {{ include "breakglass.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "breakglass.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "breakglass.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "breakglass.issuer" -}}
{{- default (printf "https://%s.%s.svc:%d" (include "breakglass.fullname" .) .Release.Namespace (int .Values.https.port)) .Values.issuer -}}
{{- end -}}

{{/* Admission webhook client config: the Service, or webhook.url when running outside the cluster. */}}
{{- define "breakglass.webhookClient" -}}
{{- if .root.Values.webhook.url }}
url: {{ printf "%s/%s" (trimSuffix "/" .root.Values.webhook.url) .path | quote }}
{{- else }}
service:
  name: {{ include "breakglass.fullname" .root }}
  namespace: {{ .root.Release.Namespace }}
  port: 443
  path: {{ printf "/%s" .path | quote }}
{{- end }}
{{- end -}}
