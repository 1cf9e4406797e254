{{/*
Naming and labels shared by every object of the chart.
Objects are applied with server-side apply by the service, so every namespaced object carries its
namespace explicitly instead of relying on the client's default.
*/}}

{{- define "nic.name" -}}
{{- default .Chart.Name .Values.nameOverride | replace "_" "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of object names: the release name, so two installs never collide. */}}
{{- define "nic.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "nic.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* Standard labels; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "nic.labels" -}}
app.kubernetes.io/name: {{ include "nic.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: budcluster
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | replace "_" "-" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Selector labels must never change between revisions, so they exclude chart version. */}}
{{- define "nic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nic.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "nic.nfdImage" -}}
{{ printf "%s:%s" .Values.nfd.image.repository .Values.nfd.image.tag | quote }}
{{- end -}}

{{/* nodeSelector / tolerations / affinity of one component; call with the component's values. */}}
{{- define "nic.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "nic.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Hardened container security context for the NFD daemons that only read the host. */}}
{{- define "nic.restrictedContainer" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
readOnlyRootFilesystem: true
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}
