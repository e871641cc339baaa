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
