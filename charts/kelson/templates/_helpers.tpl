{{/* Names and labels shared by every object. */}}
{{- define "kelson.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kelson.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kelson.labels" -}}
app.kubernetes.io/name: {{ include "kelson.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kelson.selector" -}}
app.kubernetes.io/name: {{ include "kelson.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kelson.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* kelsond's config.toml (docs/config.md). */}}
{{- define "kelson.config" -}}
# Written by the kelson Helm chart ({{ .Release.Name }}); edit the chart's values instead.
cgroup_driver = {{ .Values.cgroupDriver | quote }}
log_level = {{ .Values.logLevel | quote }}

[grpc]
address = {{ .Values.host.socket | quote }}

[image.gc]
enabled = {{ .Values.imageGC.enabled }}
high_threshold_percent = {{ .Values.imageGC.highThresholdPercent | int }}
low_threshold_percent = {{ .Values.imageGC.lowThresholdPercent | int }}
{{- range .Values.runtimeClasses }}

[runtimes.{{ .handler }}]
type = {{ .type | quote }}
{{- if eq .type "oci" }}
path = {{ required (printf "runtimeClasses %s: an oci handler needs a path" .name) .path | quote }}
{{- with .args }}
args = [{{ range $i, $a := . }}{{ if $i }}, {{ end }}{{ $a | quote }}{{ end }}]
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraConfig }}

{{ . }}
{{- end }}
{{- end -}}

{{/* The systemd unit, as packaging/systemd/kelson.service but for the chart's binDir. */}}
{{- define "kelson.unit" -}}
# Installed by the kelson Helm chart ({{ .Release.Name }}).
[Unit]
Description=kelson container runtime (CRI)
After=network-online.target local-fs.target
Wants=network-online.target
Before=kubelet.service

[Service]
Type=notify
ExecStartPre=-/sbin/modprobe overlay
ExecStart={{ .Values.host.binDir }}/kelsond --config {{ .Values.host.configDir }}/config.toml
KillMode=process
Delegate=yes
Restart=always
RestartSec=2
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
{{- end -}}
