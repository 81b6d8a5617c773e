{{/*
Node pools. Prefill, decode and mixed pods come from the one pod template below, which takes
the role as a parameter: (dict "root" $ "role" "prefill"). Each pool's values live under
.Values.<role>; settings every pool shares live under .Values.node.
*/}}

{{/* Engine settings of a pool: node.engine, overridden key by key by <role>.engine. */}}
{{- define "splitserve.node.engine" -}}
{{- $pool := index .root.Values .role -}}
{{- $overrides := $pool.engine | default dict -}}
{{- $engine := dict -}}
{{- range $key, $value := .root.Values.node.engine -}}
{{- $_ := set $engine $key (ternary (index $overrides $key) $value (hasKey $overrides $key)) -}}
{{- end -}}
{{- toYaml $engine -}}
{{- end -}}

{{/* Container resources of a pool, with `gpus` added as the nvidia.com/gpu limit. */}}
{{- define "splitserve.node.resources" -}}
{{- $pool := index .root.Values .role -}}
{{- $resources := deepCopy ($pool.resources | default dict) -}}
{{- if $pool.gpus -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" $pool.gpus -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* The node's command line: `splitserve node ...` (flags of node/cli.py). */}}
{{- define "splitserve.node.args" -}}
{{- $v := .root.Values -}}
{{- $pool := index $v .role -}}
{{- $engine := include "splitserve.node.engine" . | fromYaml -}}
- node
- --role={{ .role }}
- --model={{ $v.model.path }}
- --host=0.0.0.0
- --port={{ $v.node.grpcPort }}
- --advertise-host=$(POD_IP)
- --transport={{ $v.node.transport }}
- --kv-port={{ $v.node.kvPort }}
- --metrics-port={{ $v.node.metricsPort }}
- --device={{ $engine.device }}
- --threads={{ int64 $engine.threads }}
- --num-blocks={{ int64 $engine.numBlocks }}
- --kv-cache-bytes={{ int64 $engine.kvCacheBytes }}
- --max-num-seqs={{ int64 $engine.maxNumSeqs }}
- --max-batched-tokens={{ int64 $engine.maxBatchedTokens }}
- --max-embedding-tokens-per-step={{ int64 $engine.maxEmbeddingTokensPerStep }}
{{- with $engine.speculativeConfig }}
- {{ printf "--speculative-config=%s" (toJson .) | quote }}
{{- end }}
{{- with $v.node.chunkCache }}
- --chunk-cache-bytes={{ int64 .localBytes }}
- --chunk-ttl-s={{ int64 .ttlSeconds }}
{{- if .int8 }}
- --chunk-int8
{{- end }}
- --chunk-planning={{ .planning }}
- --blend-ratio={{ .blendRatio }}
- --blend-check-layers={{ .blendCheckLayers }}
- --cachecraft-alpha={{ .cachecraftAlpha }}
- --chunk-variants={{ int64 .variants }}
- --chunk-live-variants={{ int64 .liveVariants }}
- --chunk-eviction={{ .eviction }}
- --chunk-load={{ .load }}
{{- end }}
{{- if not $v.node.kvChecksum }}
- --no-kv-checksum
{{- end }}
{{- if ne $v.redis.mode "disabled" }}
- --redis-url={{ include "splitserve.redisUrl" .root }}
{{- end }}
{{- if $v.node.prefixStore.enabled }}
{{- if eq $v.redis.mode "disabled" }}
{{- fail "node.prefixStore.enabled needs the chart's Redis (redis.mode internal or external)" }}
{{- end }}
- --prefix-store-url={{ include "splitserve.redisUrl" .root }}
- --prefix-store-ttl-s={{ int64 $v.node.prefixStore.ttlSeconds }}
{{- if not $v.node.prefixStore.answers }}
- --no-prefix-store-answers
{{- end }}
{{- end }}
{{- if $v.node.tls.enabled }}
- --tls-dir=/etc/splitserve/tls
{{- end }}
{{- range $pool.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Environment of the node container; NCCL/gloo settings only with the torch transport. */}}
{{- define "splitserve.node.env" -}}
{{- $v := .root.Values -}}
{{- $pool := index $v .role -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: HOME
  value: /tmp
{{- include "splitserve.redisPasswordEnv" .root }}
{{- if eq $v.node.transport "torch" }}
{{- with $v.node.nccl }}
{{- if .debug }}
- name: NCCL_DEBUG
  value: {{ .debug | quote }}
{{- end }}
{{- if .socketIfname }}
- name: NCCL_SOCKET_IFNAME
  value: {{ .socketIfname | quote }}
- name: GLOO_SOCKET_IFNAME
  value: {{ .socketIfname | quote }}
{{- end }}
{{- if .ibDisable }}
- name: NCCL_IB_DISABLE
  value: "1"
{{- end }}
{{- range $name, $value := .extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with $pool.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Where a pool's pods run: runtime and priority class, node selector, tolerations, affinity
(pod spec fields; the profile Job's pod runs where the pool's pods run). */}}
{{- define "splitserve.node.scheduling" -}}
{{- $pool := index .root.Values .role -}}
{{- with $pool.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $pool.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $pool.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pool.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pool.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* gRPC health probe of a node (TCP under mTLS: kubelet gRPC probes speak plaintext only). */}}
{{- define "splitserve.node.probe" -}}
{{- if .root.Values.node.tls.enabled }}
tcpSocket:
  port: grpc
{{- else }}
grpc:
  port: {{ .root.Values.node.grpcPort }}
{{- end }}
{{ include "splitserve.probeTiming" (dict "probe" .probe) }}
{{- end -}}

{{- define "splitserve.node.podTemplate" -}}
{{- $root := .root -}}
{{- $v := .root.Values -}}
{{- $pool := index $v .role -}}
metadata:
  labels:
    {{- include "splitserve.componentLabels" (dict "root" $root "component" "node" "role" .role) | nindent 4 }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
    {{- with $pool.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "splitserve.nodeServiceAccount" $root }}
  automountServiceAccountToken: false
  {{- /* Service links would inject SPLITSERVE_*_PORT variables that the flags read. */}}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $v.node.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  {{- with include "splitserve.imagePullSecrets" $root | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with include "splitserve.node.scheduling" . | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with include "splitserve.modelInit" $root | trim }}
  initContainers:
    {{- . | nindent 4 }}
  {{- end }}
  containers:
    - name: node
      image: {{ include "splitserve.image" (dict "root" $root "variant" $v.node.imageVariant) }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["splitserve"]
      args:
        {{- include "splitserve.node.args" . | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "splitserve.fullname" $root }}-config
      env:
        {{- include "splitserve.node.env" . | nindent 8 }}
      ports:
        - name: grpc
          containerPort: {{ $v.node.grpcPort }}
        - name: kv
          containerPort: {{ $v.node.kvPort }}
        - name: metrics
          containerPort: {{ $v.node.metricsPort }}
      startupProbe:
        {{- include "splitserve.node.probe" (dict "root" $root "probe" $v.node.probes.startup) | trim | nindent 8 }}
      readinessProbe:
        {{- include "splitserve.node.probe" (dict "root" $root "probe" $v.node.probes.readiness) | trim | nindent 8 }}
      livenessProbe:
        {{- include "splitserve.node.probe" (dict "root" $root "probe" $v.node.probes.liveness) | trim | nindent 8 }}
      resources:
        {{- include "splitserve.node.resources" . | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: shm
          mountPath: /dev/shm
        {{- with include "splitserve.modelMount" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- if $v.node.tls.enabled }}
        - name: tls
          mountPath: /etc/splitserve/tls
          readOnly: true
        {{- end }}
        {{- with include "splitserve.redisTLSMount" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.node.shmSizeLimit }}
    {{- with include "splitserve.modelVolume" $root | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- if $v.node.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ $v.node.tls.secretName }}
        items:
          - key: {{ $v.node.tls.caKey }}
            path: ca.pem
          - key: {{ $v.node.tls.certKey }}
            path: node.pem
          - key: {{ $v.node.tls.keyKey }}
            path: node-key.pem
    {{- end }}
    {{- with include "splitserve.redisTLSVolume" $root | trim }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "splitserve.node.deployment" -}}
{{- $pool := index .root.Values .role -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "splitserve.fullname" .root }}-{{ .role }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "splitserve.componentLabels" (dict "root" .root "component" "node" "role" .role) | nindent 4 }}
spec:
  {{- if not $pool.autoscaling.enabled }}
  replicas: {{ $pool.replicas }}
  {{- end }}
  {{- with $pool.strategy }}
  strategy:
    type: {{ .type | default "RollingUpdate" }}
    {{- if and (ne .type "Recreate") .rollingUpdate }}
    rollingUpdate:
      {{- toYaml .rollingUpdate | nindent 6 }}
    {{- end }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "splitserve.selectorLabels" (dict "root" .root "component" "node" "role" .role) | nindent 6 }}
  template:
    {{- include "splitserve.node.podTemplate" . | nindent 4 }}
{{- end -}}
