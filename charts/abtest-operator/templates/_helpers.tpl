{{- define "abtest.name" -}}abtest-operator{{- end -}}
{{- define "abtest.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}-abtest-operator{{- end -}}
{{- define "abtest.labels" -}}
app.kubernetes.io/name: {{ include "abtest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "abtest.selector" -}}
app.kubernetes.io/name: {{ include "abtest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "abtest.operatorImage" -}}{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "abtest.evaluatorImage" -}}{{ .Values.evaluator.image.repository }}:{{ .Values.evaluator.image.tag | default .Chart.AppVersion }}{{- end -}}
