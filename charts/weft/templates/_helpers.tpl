{{/* The release's name prefix of every object. */}}
{{- define "weft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "weft.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "weft.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "weft.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The chart's own etcd: its StatefulSet and headless Service share this name. */}}
{{- define "weft.etcdName" -}}
{{ include "weft.fullname" . }}-etcd
{{- end -}}

{{/* The DNS name of member N of the chart's etcd, from its headless Service. */}}
{{- define "weft.etcdMember" -}}
{{- $name := include "weft.etcdName" .root -}}
{{ $name }}-{{ .index }}.{{ $name }}.{{ .root.Release.Namespace }}.svc.{{ .root.Values.clusterDomain }}
{{- end -}}

{{/*
NSDB's endpoints (--etcd-endpoints of both binaries): the given ones, or the members of the
chart's etcd. Settings that cannot work are refused here, since every workload renders this.
*/}}
{{- define "weft.etcdEndpoints" -}}
{{- $eps := .Values.etcd.endpoints -}}
{{- if not $eps -}}
  {{- if not .Values.etcd.deploy -}}
    {{- fail "etcd.endpoints is empty: name NSDB's etcd (--set 'etcd.endpoints={https://etcd-0.example:2379}') or let the chart run one (--set etcd.deploy=true)" -}}
  {{- end -}}
  {{- if .Values.etcd.tls.secretName -}}
    {{- fail "etcd.tls.secretName is for an etcd outside the chart (etcd.endpoints): the chart's own etcd (etcd.deploy) serves plain http" -}}
  {{- end -}}
  {{- range $i := until 3 -}}
    {{- $eps = append $eps (printf "http://%s:2379" (include "weft.etcdMember" (dict "root" $ "index" $i))) -}}
  {{- end -}}
{{- else if .Values.etcd.tls.secretName -}}
  {{- range $eps -}}
    {{- if not (hasPrefix "https://" .) -}}
      {{- fail (printf "etcd.tls.secretName is set but etcd endpoint %s is not https://" .) -}}
    {{- end -}}
  {{- end -}}
{{- end -}}
{{ join "," $eps }}
{{- end -}}

{{/* Where the etcd TLS Secret is mounted in the operator's and the agent's pods. */}}
{{- define "weft.etcdTlsDir" -}}
/etc/weft/etcd-tls
{{- end -}}

{{/* The TLS flags of both binaries, as container args. */}}
{{- define "weft.etcdTlsArgs" -}}
{{- if .Values.etcd.tls.secretName -}}
- --etcd-ca-file={{ include "weft.etcdTlsDir" . }}/ca.crt
- --etcd-cert-file={{ include "weft.etcdTlsDir" . }}/tls.crt
- --etcd-key-file={{ include "weft.etcdTlsDir" . }}/tls.key
{{- end -}}
{{- end -}}

{{- define "weft.etcdTlsMount" -}}
{{- if .Values.etcd.tls.secretName -}}
- name: etcd-tls
  mountPath: {{ include "weft.etcdTlsDir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{/* The Secret's three keys, readable by the owner and the pod's fsGroup only. */}}
{{- define "weft.etcdTlsVolume" -}}
{{- if .Values.etcd.tls.secretName -}}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.secretName }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end -}}
{{- end -}}

{{/* The default bridge's gateway: defaultBridge.gateway, or the subnet's address plus one. */}}
{{- define "weft.defaultGateway" -}}
{{- if .Values.defaultBridge.gateway -}}
{{ .Values.defaultBridge.gateway }}
{{- else -}}
{{- $o := splitList "." (first (splitList "/" .Values.defaultBridge.subnet)) -}}
{{ printf "%s.%s.%s.%d" (index $o 0) (index $o 1) (index $o 2) (add1 (atoi (index $o 3))) }}
{{- end -}}
{{- end -}}
