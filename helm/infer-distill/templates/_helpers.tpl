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

{{- define "infer-distill.configMapName" -}}
{{- printf "%s-config" (include "infer-distill.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "infer-distill.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The run root every stage derives its input/output locations from: s3://<bucket>/<prefix>.
*/}}
{{- define "infer-distill.prefix" -}}
{{- default .Release.Name .Values.s3.prefix | trimAll "/" }}
{{- end }}

{{- define "infer-distill.root" -}}
{{- $bucket := required "s3.bucket is required: --set s3.bucket=<bucket> (the bucket every artifact of the run is written to)" .Values.s3.bucket }}
{{- printf "s3://%s/%s" $bucket (include "infer-distill.prefix" .) }}
{{- end }}

{{/*
The evaluate-student fan-out: config.labels.modes x config.students.archs x config.students.seeds,
in the order `infer-distill run` uses, as a JSON list of {arch, seed, mode}.
*/}}
{{- define "infer-distill.studentRuns" -}}
{{- $cfg := .Values.config }}
{{- $modes := required "config.labels.modes must list static and/or dynamic" $cfg.labels.modes }}
{{- $archs := required "config.students.archs must list at least one student architecture" $cfg.students.archs }}
{{- $seeds := required "config.students.seeds must list at least one seed" $cfg.students.seeds }}
{{- $runs := list }}
{{- range $mode := $modes }}
{{- range $arch := $archs }}
{{- range $seed := $seeds }}
{{- $runs = append $runs (dict "arch" $arch "seed" (int64 $seed | toString) "mode" $mode) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $runs }}
{{- end }}

{{/*
One leaf template of the workflow: a pod running `infer-distill stage <name>`.
Called with (dict "root" $ "stage" "train-teacher" "key" "trainTeacher" "inputs" (list "arch")
"args" (list ...) "outputs" <yaml string or "">).
*/}}
{{- define "infer-distill.stageTemplate" -}}
{{- $ := .root }}
{{- $s := index $.Values.stages .key }}
{{- $gpu := int64 (default 0 $s.gpu) }}
- name: {{ .stage }}
  metadata:
    labels:
      {{- include "infer-distill.selectorLabels" $ | nindent 6 }}
      infer-distill/stage: {{ .stage }}
  {{- with .inputs }}
  inputs:
    parameters:
      {{- range . }}
      - name: {{ . }}
      {{- end }}
  {{- end }}
  {{- with .outputs }}
  outputs:
    {{- . | nindent 4 }}
  {{- end }}
  {{- $nodeSelector := $.Values.nodeSelector }}
  {{- $tolerations := $.Values.tolerations }}
  {{- if gt $gpu 0 }}
  {{- $nodeSelector = merge (deepCopy $.Values.gpu.nodeSelector) $.Values.nodeSelector }}
  {{- $tolerations = concat $.Values.tolerations $.Values.gpu.tolerations }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and (gt $gpu 0) (gt (int64 $.Values.retry.limit) 0) }}
  retryStrategy:
    limit: {{ $.Values.retry.limit | int64 }}
    retryPolicy: {{ $.Values.retry.retryPolicy }}
    {{- with $.Values.retry.expression }}
    expression: {{ . | quote }}
    {{- end }}
    {{- with $.Values.retry.backoff }}
    backoff:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  {{- end }}
  container:
    image: {{ include "infer-distill.image" $ }}
    imagePullPolicy: {{ $.Values.image.pullPolicy }}
    command: [infer-distill]
    args:
      - stage
      - {{ .stage }}
      - --config
      - /config/config.yaml
      - --root
      - {{ include "infer-distill.root" $ }}
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
    env:
      {{- include "infer-distill.env" $ | trim | nindent 6 }}
    resources:
      requests:
        {{- with $s.resources.requests }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if gt $gpu 0 }}
        {{ $.Values.gpu.resourceName }}: {{ $gpu | quote }}
        {{- end }}
      limits:
        {{- with $s.resources.limits }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if gt $gpu 0 }}
        {{ $.Values.gpu.resourceName }}: {{ $gpu | quote }}
        {{- end }}
    securityContext:
      {{- toYaml $.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /config
        readOnly: true
      - name: tmp
        mountPath: /tmp
      - name: dshm
        mountPath: /dev/shm
      {{- with $.Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
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
