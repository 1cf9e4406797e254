{{/*
Names, labels and the per-device choices of the runtime chart.
Every namespaced object names its namespace explicitly: the service applies the rendered objects
with server-side apply rather than through a Helm client.
*/}}

{{- define "runtime.name" -}}
{{- default .Chart.Name .Values.nameOverride | replace "_" "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "runtime.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "runtime.deploymentId" -}}
{{- .Values.deploymentId | default .Release.Name -}}
{{- end -}}

{{- define "runtime.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runtime.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: model-server
{{- end -}}

{{- define "runtime.labels" -}}
{{ include "runtime.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: budcluster
app.kubernetes.io/version: {{ include "runtime.imageTag" . | trunc 63 | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | replace "_" "-" | trunc 63 | trimSuffix "-" }}
budcluster.io/deployment-id: {{ include "runtime.deploymentId" . | quote }}
budcluster.io/device-type: {{ .Values.deviceType }}
{{- end -}}

{{- define "runtime.imageRepository" -}}
{{- .Values.image.repository | default (index .Values.images .Values.deviceType).repository -}}
{{- end -}}

{{- define "runtime.imageTag" -}}
{{- .Values.image.tag | default (index .Values.images .Values.deviceType).tag -}}
{{- end -}}

{{/* Extended resource that carries the accelerators of the chosen device type ("" for cpu). */}}
{{- define "runtime.acceleratorResource" -}}
{{- $names := dict "cuda" "nvidia.com/gpu" "rocm" "amd.com/gpu" "hpu" "habana.ai/gaudi" -}}
{{- get $names .Values.deviceType -}}
{{- end -}}

{{/* --model: a path inside the mounted PVC, or a hub id vLLM downloads itself. */}}
{{- define "runtime.modelArg" -}}
{{- if .Values.modelStorage.enabled -}}
{{- printf "%s/%s" (.Values.modelStorage.mountPath | trimSuffix "/") (.Values.model.path | trimPrefix "/") -}}
{{- else -}}
{{- .Values.model.path -}}
{{- end -}}
{{- end -}}
