{{- define "triptych.labels" -}}
app.kubernetes.io/name: triptych-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: triptych
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "triptych.selector" -}}
app.kubernetes.io/name: triptych-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "triptych.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "triptych.natsName" -}}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "triptych.natsSelector" -}}
app.kubernetes.io/name: triptych-nats
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "triptych.natsLabels" -}}
{{ include "triptych.natsSelector" . }}
app.kubernetes.io/part-of: triptych
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- /* The NATS URL the operator gives every role: natsUrl if set, else the chart's own NATS. */ -}}
{{- define "triptych.natsUrl" -}}
{{- if .Values.natsUrl -}}
{{- .Values.natsUrl -}}
{{- else if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "triptych.natsName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}
