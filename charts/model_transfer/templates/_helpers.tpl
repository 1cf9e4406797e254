{{/*
Names and labels of the transfer chart. The Job name fixes the progress ConfigMap name
("<job>-progress"), which the service and the cluster simulator both read.
*/}}

{{- define "transfer.name" -}}
{{- .Chart.Name | replace "_" "-" -}}
{{- end -}}

{{- define "transfer.jobName" -}}
{{- $name := .Values.jobName | default (printf "%s-transfer" (.Release.Name | trunc 43 | trimSuffix "-")) -}}
{{- if gt (len $name) 52 -}}
{{- fail (printf "job name %q is longer than 52 characters; the progress ConfigMap name would exceed 63" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "transfer.progressName" -}}
{{- printf "%s-progress" (include "transfer.jobName" .) -}}
{{- end -}}

{{- define "transfer.pvcName" -}}
{{- .Values.pvc.name | default (printf "%s-models" (.Release.Name | trunc 56 | trimSuffix "-")) -}}
{{- end -}}

{{- define "transfer.labels" -}}
app.kubernetes.io/name: {{ include "transfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: model-transfer
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: budcluster
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "_" "-" | trunc 63 | trimSuffix "-" }}
{{- end -}}
