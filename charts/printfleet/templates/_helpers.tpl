{{- define "printfleet.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "printfleet.labels" -}}
app.kubernetes.io/name: printfleet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "printfleet.selectorLabels" -}}
app.kubernetes.io/name: printfleet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
