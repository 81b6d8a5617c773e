{{/*
Names, labels and shared fragments. Label keys and role values are the ones in
splitserve/labels.py: the router's Kubernetes discovery selects node pods by them.
*/}}

{{- define "splitserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every resource carries. */}}
{{- define "splitserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "router" ["role" "prefill"]). */}}
{{- define "splitserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .role }}
splitserve.io/role: {{ . }}
{{- end }}
{{- end -}}

{{/* Selector labels plus the common ones. */}}
{{- define "splitserve.componentLabels" -}}
{{ include "splitserve.selectorLabels" . }}
{{ include "splitserve.labels" .root }}
{{- end -}}

{{/* The router's --k8s-selector: every node pod of this release, whatever its role. */}}
{{- define "splitserve.nodeSelectorString" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=node" .Chart.Name .Release.Name -}}
{{- end -}}

{{/* Serving image of a variant: (dict "root" $ "variant" "cpu"). */}}
{{- define "splitserve.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s-%s" .root.Values.image.repository $tag .variant -}}
{{- end -}}

{{/* imagePullSecrets of a pod spec; entries may be names or {name: ...}. */}}
{{- define "splitserve.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  {{- if kindIs "string" . }}
  - name: {{ . }}
  {{- else }}
  - name: {{ .name }}
  {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "splitserve.routerServiceAccount" -}}
{{- .Values.router.serviceAccount.name | default (printf "%s-router" (include "splitserve.fullname" .)) -}}
{{- end -}}

{{- define "splitserve.nodeServiceAccount" -}}
{{- .Values.node.serviceAccount.name | default (printf "%s-node" (include "splitserve.fullname" .)) -}}
{{- end -}}

{{- define "splitserve.apiKeysSecret" -}}
{{- .Values.router.apiKeys.existingSecret | default (printf "%s-api-keys" (include "splitserve.fullname" .)) -}}
{{- end -}}

{{- define "splitserve.redisSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "splitserve.fullname" .)) -}}
{{- end -}}

{{- define "splitserve.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretPasswordKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- end -}}

{{/*
host:port of the Redis that holds the KV values (chunk cache, prefix store), or with "state" true the one that
holds the router's state: (dict "root" . "state" false).
*/}}
{{- define "splitserve.redisEndpoint" -}}
{{- $r := .root.Values.redis -}}
{{- if eq $r.mode "internal" -}}
{{- printf "%s-redis%s:%v" (include "splitserve.fullname" .root) (ternary "-state" "" .state) $r.internal.port -}}
{{- else if and .state $r.external.state.host -}}
{{- printf "%s:%v" $r.external.state.host $r.external.state.port -}}
{{- else -}}
{{- printf "%s:%v" $r.external.host $r.external.port -}}
{{- end -}}
{{- end -}}

{{- define "splitserve.redisTLS" -}}
{{- if and (eq .Values.redis.mode "external") .Values.redis.external.tls.enabled -}}true{{- end -}}
{{- end -}}

{{/*
The nodes' --redis-url and --prefix-store-url; with (dict "root" . "state" true) the router's store URLs. The
password is never written into the pod spec: Kubernetes expands $(REDIS_PASSWORD) from the container's env, which
reads the Secret.
*/}}
{{- define "splitserve.redisUrl" -}}
{{- $root := .root | default . -}}
{{- $r := $root.Values.redis -}}
{{- $scheme := ternary "rediss" "redis" (eq (include "splitserve.redisTLS" $root) "true") -}}
{{- $user := ternary $r.external.username "" (eq $r.mode "external") -}}
{{- $auth := ternary (printf "%s:$(REDIS_PASSWORD)@" $user) "" $r.auth.enabled -}}
{{- $at := include "splitserve.redisEndpoint" (dict "root" $root "state" (default false .state)) -}}
{{- $url := printf "%s://%s%s/%v" $scheme $auth $at $r.db -}}
{{- if and (eq (include "splitserve.redisTLS" $root) "true") $r.external.tls.caSecret -}}
{{- $url = printf "%s?ssl_ca_certs=/etc/splitserve/redis-tls/ca.pem" $url -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/* REDIS_PASSWORD from the Redis Secret (an env entry) for a pod whose --redis-url names it; empty without auth. */}}
{{- define "splitserve.redisPasswordEnv" -}}
{{- if and (ne .Values.redis.mode "disabled") .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "splitserve.redisSecret" . }}
      key: {{ include "splitserve.redisSecretKey" . }}
{{- end }}
{{- end -}}

{{/* The external Redis's CA (a volume mount and its volume), when its TLS names one. */}}
{{- define "splitserve.redisTLSMount" -}}
{{- if and (eq (include "splitserve.redisTLS" .) "true") .Values.redis.external.tls.caSecret }}
- name: redis-tls
  mountPath: /etc/splitserve/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "splitserve.redisTLSVolume" -}}
{{- if and (eq (include "splitserve.redisTLS" .) "true") .Values.redis.external.tls.caSecret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.external.tls.caSecret }}
    items:
      - key: {{ .Values.redis.external.tls.caKey }}
        path: ca.pem
{{- end }}
{{- end -}}

{{/* Probe timing fields: (dict "probe" .Values.node.probes.readiness). */}}
{{- define "splitserve.probeTiming" -}}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
{{- end -}}

{{/* PodDisruptionBudget limit: (dict "pdb" $pdb). */}}
{{- define "splitserve.pdbLimit" -}}
{{- if ne (toString .pdb.minAvailable) "" -}}
minAvailable: {{ .pdb.minAvailable }}
{{- else -}}
maxUnavailable: {{ .pdb.maxUnavailable | default 1 }}
{{- end -}}
{{- end -}}

{{/* HPA metrics: (dict "autoscaling" $a). */}}
{{- define "splitserve.hpaMetrics" -}}
{{- if .autoscaling.metrics -}}
{{ toYaml .autoscaling.metrics }}
{{- else -}}
- type: Resource
  resource:
    name: cpu
    target:
      type: Utilization
      averageUtilization: {{ .autoscaling.targetCPUUtilizationPercentage }}
{{- end -}}
{{- end -}}

{{/* Volume and mount of the model, by model.source; the mount is read-only. */}}
{{- define "splitserve.modelVolume" -}}
{{- $m := .Values.model -}}
{{- if eq $m.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "hostPath" }}
- name: model
  hostPath:
    path: {{ $m.hostPath.path }}
    {{- with $m.hostPath.type }}
    type: {{ . }}
    {{- end }}
{{- else if $m.image.repository }}
- name: model
  emptyDir:
    sizeLimit: {{ $m.image.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "splitserve.modelMount" -}}
{{- $m := .Values.model -}}
{{- if or (ne $m.source "image") $m.image.repository }}
- name: model
  mountPath: {{ $m.mountPath }}
  readOnly: true
  {{- if and (eq $m.source "pvc") $m.pvc.subPath }}
  subPath: {{ $m.pvc.subPath }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Init container copying the model out of a model image (model.source image + repository). */}}
{{- define "splitserve.modelInit" -}}
{{- $m := .Values.model -}}
{{- if and (eq $m.source "image") $m.image.repository }}
- name: copy-model
  image: {{ printf "%s:%s" $m.image.repository $m.image.tag }}
  imagePullPolicy: {{ $m.image.pullPolicy }}
  {{- /* Mounted away from sourcePath, which the volume would otherwise hide. */}}
  command: ["cp", "-R", "{{ trimSuffix "/" $m.image.sourcePath }}/.", "/splitserve-model"]
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: /splitserve-model
{{- end }}
{{- end -}}

{{/* Refuse value combinations that would deploy a cluster that cannot serve. */}}
{{- define "splitserve.validate" -}}
{{- $v := .Values -}}
{{- if not (or $v.prefill.enabled $v.decode.enabled $v.mixed.enabled) -}}
{{- fail "enable at least one node pool: prefill.enabled, decode.enabled or mixed.enabled" -}}
{{- end -}}
{{- if and $v.prefill.enabled (not (or $v.decode.enabled $v.mixed.enabled)) -}}
{{- fail "prefill.enabled needs decode.enabled or mixed.enabled: prefill nodes hand every request to a decode-capable node" -}}
{{- end -}}
{{- if and $v.decode.enabled (not (or $v.prefill.enabled $v.mixed.enabled)) -}}
{{- fail "decode.enabled needs prefill.enabled or mixed.enabled: decode nodes take requests prefilled elsewhere" -}}
{{- end -}}
{{- if and (eq $v.model.source "pvc") (not $v.model.pvc.claimName) -}}
{{- fail "model.source is pvc: set model.pvc.claimName" -}}
{{- end -}}
{{- if and (eq $v.model.source "hostPath") (not $v.model.hostPath.path) -}}
{{- fail "model.source is hostPath: set model.hostPath.path" -}}
{{- end -}}
{{- if and $v.router.cacheSaltPerKey (not $v.router.apiKeys.enabled) -}}
{{- fail "router.cacheSaltPerKey needs router.apiKeys.enabled: without keys every request comes from one caller" -}}
{{- end -}}
{{- if and (eq $v.router.responsesStore "redis") (eq $v.redis.mode "disabled") -}}
{{- fail "router.responsesStore is redis: set redis.mode to internal or external" -}}
{{- end -}}
{{- if and (eq $v.router.batchStore "redis") (eq $v.redis.mode "disabled") -}}
{{- fail "router.batchStore is redis: set redis.mode to internal or external" -}}
{{- end -}}
{{- if and $v.router.allowRuntimeLora (eq $v.router.loraStore "redis") (eq $v.redis.mode "disabled") -}}
{{- fail "router.loraStore is redis: set redis.mode to internal or external" -}}
{{- end -}}
{{- if and (eq $v.redis.mode "external") (not $v.redis.external.host) -}}
{{- fail "redis.mode is external: set redis.external.host" -}}
{{- end -}}
{{- if and (eq $v.redis.mode "external") $v.redis.auth.enabled (not (or $v.redis.auth.existingSecret $v.redis.auth.password)) -}}
{{- fail "redis.mode is external with auth: set redis.auth.existingSecret (or redis.auth.password)" -}}
{{- end -}}
{{- if and $v.router.tls.enabled (not $v.router.tls.secretName) -}}
{{- fail "router.tls.enabled: set router.tls.secretName" -}}
{{- end -}}
{{- if and $v.node.tls.enabled (not $v.node.tls.secretName) -}}
{{- fail "node.tls.enabled: set node.tls.secretName" -}}
{{- end -}}
{{- if and $v.node.tls.enabled (not $v.router.tls.enabled) -}}
{{- fail "node.tls.enabled needs router.tls.enabled: the router presents its certificate to mTLS nodes" -}}
{{- end -}}
{{- if and $v.router.apiKeys.enabled (not (or $v.router.apiKeys.existingSecret $v.router.apiKeys.keys)) -}}
{{- fail "router.apiKeys.enabled: set router.apiKeys.existingSecret (or router.apiKeys.keys)" -}}
{{- end -}}
{{- end -}}
