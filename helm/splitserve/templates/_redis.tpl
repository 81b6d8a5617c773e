{{/*
An in-chart Redis (StatefulSet): (dict "root" . "component" "redis" "maxmemory" "1gb" "policy" "allkeys-lru"
"persistence" .Values.redis.internal.persistence "resources" ...). Image, port, password and scheduling are
.Values.redis.internal's.
*/}}
{{- define "splitserve.redis.statefulSet" -}}
{{- $root := .root }}
{{- $redis := $root.Values.redis }}
{{- $r := $redis.internal }}
{{- $name := printf "%s-%s" (include "splitserve.fullname" $root) .component }}
{{- $labels := dict "root" $root "component" .component }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "splitserve.componentLabels" $labels | nindent 4 }}
spec:
  replicas: 1
  serviceName: {{ $name }}-headless
  selector:
    matchLabels:
      {{- include "splitserve.selectorLabels" $labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "splitserve.componentLabels" $labels | nindent 8 }}
      annotations:
        checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- toYaml $r.podSecurityContext | nindent 8 }}
      {{- with include "splitserve.imagePullSecrets" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with $r.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $r.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $r.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: redis
          image: {{ printf "%s:%s" $r.image.repository $r.image.tag }}
          imagePullPolicy: {{ $r.image.pullPolicy }}
          command: ["redis-server"]
          args:
            - --port
            - {{ $r.port | quote }}
            - --maxmemory
            - {{ .maxmemory | quote }}
            - --maxmemory-policy
            - {{ .policy }}
            {{- if .persistence.enabled }}
            - --appendonly
            - "yes"
            {{- else }}
            {{- /* A cache without a volume: no snapshots to write. */}}
            - --save
            - ""
            - --appendonly
            - "no"
            {{- end }}
            {{- if $redis.auth.enabled }}
            - --requirepass
            - $(REDIS_PASSWORD)
            {{- end }}
          {{- if $redis.auth.enabled }}
          env:
            - name: REDIS_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ include "splitserve.redisSecret" $root }}
                  key: {{ include "splitserve.redisSecretKey" $root }}
            {{- /* redis-cli reads the password from REDISCLI_AUTH. */}}
            - name: REDISCLI_AUTH
              valueFrom:
                secretKeyRef:
                  name: {{ include "splitserve.redisSecret" $root }}
                  key: {{ include "splitserve.redisSecretKey" $root }}
          {{- end }}
          ports:
            - name: redis
              containerPort: {{ $r.port }}
          readinessProbe:
            exec:
              command: ["sh", "-c", "redis-cli -p {{ $r.port }} ping | grep -q PONG"]
            periodSeconds: 10
            timeoutSeconds: 3
          livenessProbe:
            tcpSocket:
              port: redis
            periodSeconds: 20
            timeoutSeconds: 3
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: data
              mountPath: /data
      {{- if not .persistence.enabled }}
      volumes:
        - name: data
          emptyDir: {}
      {{- end }}
  {{- if .persistence.enabled }}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with .persistence.storageClass }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ .persistence.size }}
  {{- end }}
{{- end -}}

{{/* Its Service and headless Service: (dict "root" . "component" "redis"). */}}
{{- define "splitserve.redis.services" -}}
{{- $root := .root }}
{{- $name := printf "%s-%s" (include "splitserve.fullname" .root) .component }}
{{- $labels := dict "root" .root "component" .component }}
{{- $port := .root.Values.redis.internal.port }}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "splitserve.componentLabels" $labels | nindent 4 }}
spec:
  selector:
    {{- include "splitserve.selectorLabels" $labels | nindent 4 }}
  ports:
    - name: redis
      port: {{ $port }}
      targetPort: redis
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}-headless
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "splitserve.componentLabels" $labels | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "splitserve.selectorLabels" $labels | nindent 4 }}
  ports:
    - name: redis
      port: {{ $port }}
      targetPort: redis
{{- end -}}
