{{/* The router's command line: `splitserve router ...` (flags of router/cli.py). */}}
{{- define "splitserve.router.args" -}}
{{- $r := .Values.router -}}
- router
- --model={{ .Values.model.path }}
- --host=0.0.0.0
- --port={{ $r.grpcPort }}
- --http-port={{ $r.httpPort }}
- --discovery=kubernetes
- --k8s-namespace={{ .Release.Namespace }}
- --k8s-selector={{ include "splitserve.nodeSelectorString" . }}
{{- if $r.apiKeys.enabled }}
- --api-keys-file=/etc/splitserve/api-keys/{{ $r.apiKeys.secretKey }}
{{- end }}
{{- if $r.cacheSaltPerKey }}
- --cache-salt-per-key
{{- end }}
{{- if $r.allowRuntimeLora }}
- --allow-runtime-lora
{{- if eq $r.loraStore "redis" }}
- --lora-store={{ include "splitserve.redisUrl" (dict "root" . "state" true) }}
{{- end }}
{{- end }}
{{- if $r.maxLocalPrefillTokens }}
- --max-local-prefill-tokens={{ int64 $r.maxLocalPrefillTokens }}
{{- end }}
{{- if not $r.decodeAffinity }}
- --no-decode-affinity
{{- end }}
{{- if ne (int64 $r.decodeAffinitySlack) 2 }}
- --decode-affinity-slack={{ int64 $r.decodeAffinitySlack }}
{{- end }}
{{- if $r.tls.enabled }}
- --tls-dir=/etc/splitserve/tls
{{- end }}
{{- if eq $r.responsesStore "redis" }}
- --responses-store={{ include "splitserve.redisUrl" (dict "root" . "state" true) }}
{{- end }}
{{- if eq $r.batchStore "redis" }}
- --batch-store={{ include "splitserve.redisUrl" (dict "root" . "state" true) }}
- --batch-claim-s={{ $r.batch.claimSeconds }}
{{- end }}
- --batch-concurrency={{ int64 $r.batch.concurrency }}
- --batch-priority={{ int64 $r.batch.priority }}
- --batch-storage-bytes={{ int64 $r.batch.storageBytes }}
{{- range $r.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Router probe: gRPC health, or HTTPS /health under TLS (kubelet gRPC probes speak plaintext only). */}}
{{- define "splitserve.router.probe" -}}
{{- if .root.Values.router.tls.enabled }}
httpGet:
  path: /health
  port: http
  scheme: HTTPS
{{- else }}
grpc:
  port: {{ .root.Values.router.grpcPort }}
{{- end }}
{{ include "splitserve.probeTiming" (dict "probe" .probe) }}
{{- end -}}

{{/* "true" when the router talks to the chart's Redis (stored responses, batches or runtime LoRA adapters
there), else "". */}}
{{- define "splitserve.router.usesRedis" -}}
{{- $r := .Values.router -}}
{{- $loras := and $r.allowRuntimeLora (eq $r.loraStore "redis") -}}
{{- if or (eq $r.responsesStore "redis") (eq $r.batchStore "redis") $loras }}true{{ end -}}
{{- end -}}
