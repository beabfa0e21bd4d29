{{/*
Names and labels.
*/}}
{{- define "infer-distill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, plus the chart name unless the release name already holds it. */}}
{{- define "infer-distill.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "infer-distill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "infer-distill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infer-distill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "infer-distill.labels" -}}
helm.sh/chart: {{ include "infer-distill.chart" . }}
{{ include "infer-distill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "infer-distill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "infer-distill.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The project image. Pods on every node pull it, so its repository must name a registry.
*/}}
{{- define "infer-distill.image" -}}
{{- $repo := required "image.repository is required: the registry-qualified project image, e.g. --set image.repository=ghcr.io/acme/infer-distill (build, tag and push it: README, Containers)" .Values.image.repository }}
{{- if not (regexMatch "^(localhost|[^/]*[.:][^/]*)/" $repo) }}
{{- fail (printf "image.repository=%s names no registry, so no node can pull it: build, tag and push the image (README, Containers) and set e.g. image.repository=ghcr.io/acme/%s" $repo $repo) }}
{{- end }}
{{- printf "%s:%s" $repo (default (printf "%s-cuda" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}

{{/*
The root runs are written under: s3://<bucket>/<prefix>; a run of the template writes to
<root>/<workflow name>.
*/}}
{{- define "infer-distill.prefix" -}}
{{- default .Release.Name .Values.s3.prefix | trimAll "/" }}
{{- end }}

{{- define "infer-distill.root" -}}
{{- $bucket := required "s3.bucket is required: --set s3.bucket=<bucket> (the bucket every artifact of the run is written to)" .Values.s3.bucket }}
{{- printf "s3://%s/%s" $bucket (include "infer-distill.prefix" .) }}
{{- end }}

{{/* A step's key under .Values.stages: train-teacher -> trainTeacher. */}}
{{- define "infer-distill.stageKey" -}}
{{- . | replace "-" "_" | camelcase | untitle }}
{{- end }}

{{/*
One pod template of files/workflow-template.yaml (generated from the plan: name, command,
inputs, outputs, retry strategy), completed with the values: image, resources and GPUs,
scheduling, environment, volumes, security. Called with (dict "root" $ "template" <template>).
*/}}
{{- define "infer-distill.podTemplate" -}}
{{- $ := .root }}
{{- $t := deepCopy .template }}
{{- $key := include "infer-distill.stageKey" $t.name }}
{{- $s := required (printf "stages.%s is missing from the values (the settings of step %s)" $key $t.name) (index $.Values.stages $key) }}
{{- $gpu := int64 (default 0 $s.gpu) }}
{{- $labels := merge (deepCopy $t.metadata.labels) (include "infer-distill.selectorLabels" $ | fromYaml) }}
{{- $_ := set $t "metadata" (dict "labels" $labels) }}
{{- $requests := deepCopy (default dict $s.resources.requests) }}
{{- $limits := deepCopy (default dict $s.resources.limits) }}
{{- $nodeSelector := $.Values.nodeSelector }}
{{- $tolerations := $.Values.tolerations }}
{{- if gt $gpu 0 }}
{{- $_ := set $requests $.Values.gpu.resourceName ($gpu | toString) }}
{{- $_ := set $limits $.Values.gpu.resourceName ($gpu | toString) }}
{{- $nodeSelector = merge (deepCopy $.Values.gpu.nodeSelector) $.Values.nodeSelector }}
{{- $tolerations = concat $.Values.tolerations $.Values.gpu.tolerations }}
{{- end }}
{{- with $nodeSelector }}{{ $_ := set $t "nodeSelector" . }}{{ end }}
{{- with $tolerations }}{{ $_ := set $t "tolerations" . }}{{ end }}
{{- with $.Values.affinity }}{{ $_ := set $t "affinity" . }}{{ end }}
{{- $retry := $t.retryStrategy }}
{{- if hasKey $.Values.retry "limit" }}{{ $_ := set $retry "limit" (int64 $.Values.retry.limit) }}{{ end }}
{{- with $.Values.retry.backoff }}{{ $_ := set $retry "backoff" (merge (deepCopy .) $retry.backoff) }}{{ end }}
{{- $mounts := list (dict "name" "tmp" "mountPath" "/tmp") (dict "name" "dshm" "mountPath" "/dev/shm") }}
{{- if and $.Values.data.claimName (eq (index $labels "infer-distill/reads-dataset" | default "") "true") }}
{{- $mounts = append $mounts (dict "name" "data" "mountPath" $.Values.data.mountPath "readOnly" true) }}
{{- end }}
{{- $c := $t.container }}
{{- $_ := set $c "image" (include "infer-distill.image" $) }}
{{- $_ := set $c "imagePullPolicy" $.Values.image.pullPolicy }}
{{- $env := include "infer-distill.env" $ | fromYamlArray }}
{{- if gt $gpu 0 }}
{{- /* A pod holding a GPU refuses to fall back to its CPU when CUDA is unusable (infer_distill.runtime.accelerator). */}}
{{- $env = append $env (dict "name" "INFER_REQUIRE_CUDA" "value" "1") }}
{{- end }}
{{- $_ := set $c "env" $env }}
{{- $_ := set $c "resources" (dict "requests" $requests "limits" $limits) }}
{{- $_ := set $c "securityContext" $.Values.securityContext }}
{{- $_ := set $c "volumeMounts" (concat $mounts $.Values.extraVolumeMounts) }}
{{- toYaml (list $t) }}
{{- end }}

{{/*
A fan-out of files/workflow-template.yaml (a DAG template whose one task runs a step once per
item), with that step's parallelism from the values.
*/}}
{{- define "infer-distill.dagTemplate" -}}
{{- $ := .root }}
{{- $t := deepCopy .template }}
{{- $tasks := $t.dag.tasks }}
{{- if and (eq (len $tasks) 1) (index (first $tasks) "withParam") }}
{{- $s := index $.Values.stages (include "infer-distill.stageKey" (first $tasks).template) }}
{{- with $s.parallelism }}{{ $_ := set $t "parallelism" (int64 .) }}{{ end }}
{{- end }}
{{- toYaml (list $t) }}
{{- end }}

{{/*
Environment of every step: S3 location and credentials (Secret references only), and writable
cache/home directories under /tmp because the root filesystem is read-only.
*/}}
{{- define "infer-distill.env" -}}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.credentialsSecret }}
{{- if .name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
- name: HOME
  value: /tmp/home
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: TORCH_HOME
  value: /tmp/torch
- name: HF_HOME
  value: /tmp/huggingface
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
