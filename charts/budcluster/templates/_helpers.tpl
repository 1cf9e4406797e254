{{/* Names and labels. */}}
{{- define "budcluster.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "budcluster.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "budcluster.labels" -}}
{{ include "budcluster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "budcluster.serviceAccountName" -}}
{{- default (include "budcluster.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "budcluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A referenced Secret's name, required: the chart never generates one. */}}
{{- define "budcluster.secretName" -}}
{{- $ref := index .root.Values.secrets .which -}}
{{- required (printf "secrets.%s.name: the name of an existing Secret (README, Running on Kubernetes)" .which) $ref.name -}}
{{- end -}}

{{/* Host names Django answers to: the Ingress host, in-cluster names, localhost (kubelet probes), extra ones. */}}
{{- define "budcluster.allowedHosts" -}}
{{- $name := include "budcluster.fullname" . -}}
{{- $hosts := list "localhost" $name (printf "%s.%s" $name .Release.Namespace) (printf "%s.%s.svc" $name .Release.Namespace) -}}
{{- if and .Values.ingress.enabled .Values.ingress.host -}}
{{- $hosts = prepend $hosts .Values.ingress.host -}}
{{- end -}}
{{- join "," (concat $hosts .Values.allowedHosts | uniq) -}}
{{- end -}}

{{/* Environment shared by every BudCluster container (web, workers, beat, the migration Job). */}}
{{- define "budcluster.env" -}}
- name: DJANGO_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "budcluster.secretName" (dict "root" . "which" "django") }}
      key: {{ .Values.secrets.django.key }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "budcluster.secretName" (dict "root" . "which" "database") }}
      key: {{ .Values.secrets.database.key }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "budcluster.secretName" (dict "root" . "which" "broker") }}
      key: {{ .Values.secrets.broker.key }}
- name: CRYPTO_PRIVATE_KEY_PATH
  value: /crypto-keys/current/rsa-private-key.pem
- name: CRYPTO_SYMMETRIC_KEY_PATH
  value: /crypto-keys/current/symmetric-key-256
- name: CRYPTO_RETIRED_KEYS_DIR
  value: /crypto-keys/retired
- name: DJANGO_ALLOWED_HOSTS
  value: {{ include "budcluster.allowedHosts" . | quote }}
{{- if and .Values.ingress.enabled .Values.ingress.host }}
- name: DJANGO_CSRF_TRUSTED_ORIGINS
  value: {{ printf "%s://%s" (ternary "https" "http" (ne .Values.ingress.tlsSecretName "")) .Values.ingress.host | quote }}
{{- end }}
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Pod and container security: PodSecurity "restricted". */}}
{{- define "budcluster.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "budcluster.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "budcluster.volumeMounts" -}}
- name: var
  mountPath: /app/var
- name: crypto-keys
  mountPath: /crypto-keys/current
  readOnly: true
{{- if .Values.secrets.retiredKeys.name }}
- name: retired-keys
  mountPath: /crypto-keys/retired
  readOnly: true
{{- end }}
{{- end -}}

{{- define "budcluster.volumes" -}}
- name: var
  emptyDir:
    sizeLimit: {{ .Values.varVolume.sizeLimit }}
- name: crypto-keys
  secret:
    secretName: {{ include "budcluster.secretName" (dict "root" . "which" "cryptoKeys") }}
    defaultMode: 0440
{{- if .Values.secrets.retiredKeys.name }}
- name: retired-keys
  secret:
    secretName: {{ .Values.secrets.retiredKeys.name }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Pod spec parts every BudCluster pod shares. */}}
{{- define "budcluster.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- include "budcluster.podSecurityContext" .root | nindent 2 }}
volumes:
  {{- include "budcluster.volumes" .root | nindent 2 }}
{{- with .spec.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
