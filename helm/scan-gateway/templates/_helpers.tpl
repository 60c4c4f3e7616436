{{/* vim: set filetype=mustache: */}}

{{/* Chart name, at most 63 characters (a DNS label). */}}
{{- define "scan-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources, at most 63 characters. When the release name already
contains the chart name, the release name alone is used.
*/}}
{{- define "scan-gateway.fullname" -}}
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

{{/* A name derived from the full name with a suffix, still at most 63 characters. */}}
{{- define "scan-gateway.suffixed" -}}
{{- $full := include "scan-gateway.fullname" .root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "scan-gateway.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scan-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "scan-gateway.labels" -}}
helm.sh/chart: {{ include "scan-gateway.chart" . }}
{{ include "scan-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: scan-gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the gateway's pods (never change them: selectors are immutable). */}}
{{- define "scan-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scan-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scan-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scan-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* registry/repository:tag@digest */}}
{{- define "scan-gateway.image" -}}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .Values.image.registry) .Values.image.repository }}
{{- end }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" $repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* The gateway's binary in the image: the Dockerfile's ENTRYPOINT (the chart checks compare). */}}
{{- define "scan-gateway.binary" -}}
/usr/local/bin/scan-gateway
{{- end }}

{{/* The Secret the chart creates for values given inline (client secret, PEM, Redis URL). */}}
{{- define "scan-gateway.secretName" -}}
{{- include "scan-gateway.fullname" . }}
{{- end }}

{{- define "scan-gateway.configMapName" -}}
{{- include "scan-gateway.suffixed" (dict "root" . "suffix" "config") }}
{{- end }}

{{/* true when the chart has something to put in its own Secret. */}}
{{- define "scan-gateway.createSecret" -}}
{{- if or .Values.azure.clientSecret.value .Values.azure.clientCertificate.value .Values.redis.url -}}
true
{{- end }}
{{- end }}

{{- define "scan-gateway.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret -}}
true
{{- end }}
{{- end }}

{{- define "scan-gateway.clientCertificateEnabled" -}}
{{- if or .Values.azure.clientCertificate.value .Values.azure.clientCertificate.existingSecret -}}
true
{{- end }}
{{- end }}

{{/* Pods the Deployment normally runs: replicaCount, or autoscaling.maxReplicas with the HPA. */}}
{{- define "scan-gateway.replicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.maxReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
Extra pods a rolling update runs next to the old ones: updateStrategy.maxSurge, a percentage
rounded up as Kubernetes does, and never more than the replicas (the new ReplicaSet stops at the
desired count, the old one only shrinks).
*/}}
{{- define "scan-gateway.surgePods" -}}
{{- $replicas := int (include "scan-gateway.replicas" .) }}
{{- $surge := .Values.updateStrategy.maxSurge }}
{{- $pods := 0 }}
{{- if kindIs "string" $surge }}
{{- $pods = div (add (mul $replicas (int (trimSuffix "%" $surge))) 99) 100 }}
{{- else }}
{{- $pods = int $surge }}
{{- end }}
{{- min $pods $replicas }}
{{- end }}

{{/*
SCAN_GATEWAY_REPLICAS: the count the gateway divides each limit by for a pod's share (without
Redis always, with Redis only while Redis is unreachable). With Redis: the replicas (the shared
script holds back the shares of missing replicas, so a larger count would waste quota). Without
Redis and gateway.quotaSharePerPod: replicas + rolling-update surge, every pod that can run at
once. Without Redis otherwise: 1 (the chart allows one pod only, see validateValues).
*/}}
{{- define "scan-gateway.replicasForQuota" -}}
{{- $replicas := int (include "scan-gateway.replicas" .) }}
{{- if and (not (include "scan-gateway.redisEnabled" .)) .Values.gateway.quotaSharePerPod }}
{{- add $replicas (int (include "scan-gateway.surgePods" .)) }}
{{- else }}
{{- $replicas }}
{{- end }}
{{- end }}

{{/*
TCP port of a URL: the one it names, else the default given for its scheme (dict "url" URL
"default" PORT). urlParse keeps the port in "host" (an IPv6 host ends in "]" without one).
*/}}
{{- define "scan-gateway.urlPort" -}}
{{- $port := regexFind ":[0-9]+$" (urlParse .url).host | trimPrefix ":" }}
{{- default (toString .default) $port }}
{{- end }}

{{/*
Port the NetworkPolicy opens to Redis: the port of redis.url (6379 when it names none, for
redis:// and rediss:// alike, as the gateway's Redis client does); with redis.existingSecret
the chart cannot read the URL, so redis.port, or 6379.
*/}}
{{- define "scan-gateway.redisPort" -}}
{{- if .Values.redis.url }}
{{- include "scan-gateway.urlPort" (dict "url" .Values.redis.url "default" 6379) }}
{{- else }}
{{- .Values.redis.port | default 6379 }}
{{- end }}
{{- end }}

{{/* Port the NetworkPolicy opens to the OTLP endpoint: its port, else its scheme's. */}}
{{- define "scan-gateway.otlpPort" -}}
{{- $scheme := (urlParse .Values.otel.endpoint).scheme }}
{{- include "scan-gateway.urlPort" (dict "url" .Values.otel.endpoint "default" (ternary 443 80 (eq $scheme "https"))) }}
{{- end }}

{{/* Secret of the serving certificate. */}}
{{- define "scan-gateway.tlsSecretName" -}}
{{- if .Values.tls.secretName }}
{{- .Values.tls.secretName }}
{{- else if .Values.tls.certManager.enabled }}
{{- include "scan-gateway.suffixed" (dict "root" . "suffix" "tls") }}
{{- end }}
{{- end }}

{{- define "scan-gateway.clientCASecretName" -}}
{{- default (include "scan-gateway.tlsSecretName" .) .Values.tls.clientCA.secretName }}
{{- end }}

{{/* "grpc" or "http": how the kubelet probes the gateway. */}}
{{- define "scan-gateway.probeMode" -}}
{{- if eq .Values.probes.mode "auto" }}
{{- ternary "http" "grpc" .Values.tls.enabled }}
{{- else }}
{{- .Values.probes.mode }}
{{- end }}
{{- end }}

{{/*
Checks across values that the JSON schema cannot express; a broken combination fails
`helm install`, `helm template` and `helm lint` with a message that names the values.
*/}}
{{- define "scan-gateway.validateValues" -}}
{{- $azure := .Values.azure }}
{{- $sources := list }}
{{- if or $azure.clientSecret.value $azure.clientSecret.existingSecret }}
{{- $sources = append $sources "azure.clientSecret" }}
{{- end }}
{{- if or $azure.clientCertificate.value $azure.clientCertificate.existingSecret }}
{{- $sources = append $sources "azure.clientCertificate" }}
{{- end }}
{{- if $azure.workloadIdentity.enabled }}
{{- $sources = append $sources "azure.workloadIdentity" }}
{{- end }}
{{- if gt (len $sources) 1 }}
{{- fail (printf "choose one Azure credential, not %s" (join " and " $sources)) }}
{{- end }}
{{- if and $azure.clientSecret.value $azure.clientSecret.existingSecret }}
{{- fail "set azure.clientSecret.value or azure.clientSecret.existingSecret, not both" }}
{{- end }}
{{- if and $azure.clientCertificate.value $azure.clientCertificate.existingSecret }}
{{- fail "set azure.clientCertificate.value or azure.clientCertificate.existingSecret, not both" }}
{{- end }}
{{- if and (not $azure.workloadIdentity.enabled) (gt (len $sources) 0) (or (not $azure.tenantId) (not $azure.clientId)) }}
{{- fail (printf "%s needs azure.tenantId and azure.clientId" (first $sources)) }}
{{- end }}
{{- if and $azure.workloadIdentity.enabled .Values.serviceAccount.create (not $azure.clientId) }}
{{- fail "azure.workloadIdentity needs azure.clientId (written to the ServiceAccount annotation azure.workload.identity/client-id)" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "set redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- /* A port given besides a URL that names another would open the wrong one. */}}
{{- if and .Values.redis.url .Values.redis.port (ne (int .Values.redis.port) (int (include "scan-gateway.redisPort" .))) }}
{{- fail (printf "redis.port %d is not the port of redis.url (%s): the NetworkPolicy would open the wrong one. Leave redis.port at 0 (the chart reads the URL's) or make them agree" (int .Values.redis.port) (include "scan-gateway.redisPort" .)) }}
{{- end }}
{{- if and .Values.otel.endpoint .Values.otel.port (ne (int .Values.otel.port) (int (include "scan-gateway.otlpPort" .))) }}
{{- fail (printf "otel.port %d is not the port of otel.endpoint (%s): the NetworkPolicy would open the wrong one. Leave otel.port at 0 (the chart reads the endpoint's) or make them agree" (int .Values.otel.port) (include "scan-gateway.otlpPort" .)) }}
{{- end }}
{{- $redis := include "scan-gateway.redisEnabled" . }}
{{- $sharePerPod := .Values.gateway.quotaSharePerPod }}
{{- if and $redis $sharePerPod }}
{{- fail "gateway.quotaSharePerPod applies only without Redis: with redis.url or redis.existingSecret the pods share the whole quota (set gateway.quotaSharePerPod: false)" }}
{{- end }}
{{- if and (not $redis) (not $sharePerPod) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- $what := printf "replicaCount %d" (int .Values.replicaCount) }}
{{- if .Values.autoscaling.enabled }}{{ $what = "autoscaling.enabled" }}{{ end }}
{{- fail (printf "%s without Redis: each pod would count the Defender quota (%s) on its own. Set redis.url or redis.existingSecret so the pods share it, or gateway.quotaSharePerPod: true so each pod keeps to quota / %d (SCAN_GATEWAY_REPLICAS: replicas + updateStrategy.maxSurge), or run one pod (replicaCount: 1, autoscaling.enabled: false)" $what .Values.gateway.quota (add (int (include "scan-gateway.replicas" .)) (int (include "scan-gateway.surgePods" .)))) }}
{{- end }}
{{- $divisor := int (include "scan-gateway.replicasForQuota" .) }}
{{- range $name, $spec := dict "gateway.quota" .Values.gateway.quota "gateway.quotaTotal" .Values.gateway.quotaTotal }}
{{- range $pair := splitList "," $spec }}
{{- if trim $pair }}
{{- $calls := int (trim (first (splitList "/" $pair))) }}
{{- if and (not $redis) (lt $calls $divisor) }}
{{- fail (printf "%s %s allows fewer calls than SCAN_GATEWAY_REPLICAS (%d): without Redis each pod's share (calls / replicas, rounded down) would be no call, and the gateway refuses to start (share the quota through Redis, raise the limit or run fewer pods)" $name (trim $pair) $divisor) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $needed := add .Values.preStopSleepSeconds .Values.gateway.shutdownGraceSeconds 5 }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds (%d) + gateway.shutdownGraceSeconds (%d) + 5 = %d, or Kubernetes kills the gateway before in-flight calls finish" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) (int .Values.gateway.shutdownGraceSeconds) (int $needed)) }}
{{- end }}
{{- if and .Values.tls.enabled (not (include "scan-gateway.tlsSecretName" .)) }}
{{- fail "tls.enabled needs tls.secretName or tls.certManager.enabled" }}
{{- end }}
{{- if and .Values.tls.clientCA.enabled (not .Values.tls.enabled) }}
{{- fail "tls.clientCA.enabled (mTLS) needs tls.enabled" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" }}
{{- end }}
{{- if and .Values.tls.enabled (eq .Values.probes.mode "grpc") }}
{{- fail "probes.mode grpc cannot be used with tls.enabled: the kubelet's gRPC probe speaks plaintext only (use auto or http)" }}
{{- end }}
{{- /*
The kubelet's gRPC probes are connections under the gateway's caps, all from the node's one
address, liveness and readiness at times together: a cap below 2 refuses one of them.
*/}}
{{- if eq (include "scan-gateway.probeMode" .) "grpc" }}
{{- range $name := list "max" "maxPerPeer" }}
{{- $cap := int (index $.Values.gateway.connections $name) }}
{{- if lt $cap 2 }}
{{- fail (printf "gateway.connections.%s %d leaves the kubelet's gRPC probes no room: its liveness and readiness probes connect from the node's one address, at times together, and refused liveness probes restart the pod. Allow at least 2, or set probes.mode: http (the admin port, outside these limits)" $name $cap) }}
{{- end }}
{{- end }}
{{- end }}
{{- /*
Variables the chart always sets from a value: the same name in extraEnv would define it twice,
which is how a values file that set one through extraEnv before the chart had a value for it
would upgrade. SCAN_GATEWAY_READ_FRESHNESS, rendered only when gateway.readFreshness is set, is
refused all the same: one place sets it, so setting the value later cannot define it twice.
*/}}
{{- $fromValues := dict
  "RUST_LOG" "gateway.logLevel"
  "SCAN_GATEWAY_LOG_FORMAT" "gateway.logFormat"
  "SCAN_GATEWAY_MAX_MESSAGE_BYTES" "gateway.maxMessageBytes"
  "SCAN_GATEWAY_BACKGROUND_FLOOR" "gateway.backgroundFloor"
  "SCAN_GATEWAY_MAX_STREAMS_PER_CONNECTION" "gateway.maxStreamsPerConnection"
  "SCAN_GATEWAY_MAX_STREAMS_PER_CALLER" "gateway.maxStreamsPerCaller"
  "SCAN_GATEWAY_CALLER_RATE" "gateway.callerRate"
  "SCAN_GATEWAY_CALLER_BURST" "gateway.callerBurst"
  "SCAN_GATEWAY_MAX_CONNECTIONS" "gateway.connections.max"
  "SCAN_GATEWAY_MAX_CONNECTIONS_PER_PEER" "gateway.connections.maxPerPeer"
  "SCAN_GATEWAY_HANDSHAKE_TIMEOUT" "gateway.connections.handshakeTimeout"
  "SCAN_GATEWAY_IDLE_TIMEOUT" "gateway.connections.idleTimeout"
  "SCAN_GATEWAY_KEEPALIVE_INTERVAL" "gateway.connections.keepaliveInterval"
  "SCAN_GATEWAY_KEEPALIVE_TIMEOUT" "gateway.connections.keepaliveTimeout"
  "SCAN_GATEWAY_STREAM_RIDE_OUT" "gateway.streamRideOut"
  "SCAN_GATEWAY_MAX_WATCH" "gateway.maxWatch"
  "SCAN_GATEWAY_READ_FRESHNESS" "gateway.readFreshness" }}
{{- range $var := .Values.extraEnv }}
{{- with get $fromValues (toString $var.name) }}
{{- fail (printf "extraEnv sets %s, which the chart sets from %s: set %s instead (one place per setting; with both the variable would be defined twice)" $var.name . .) }}
{{- end }}
{{- end }}
{{- if eq .Values.containerPorts.grpc .Values.containerPorts.admin }}
{{- fail "containerPorts.grpc and containerPorts.admin must differ" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- $min := "" }}
{{- if not (kindIs "invalid" $pdb.minAvailable) }}{{ $min = toString $pdb.minAvailable }}{{ end }}
{{- $max := "" }}
{{- if not (kindIs "invalid" $pdb.maxUnavailable) }}{{ $max = toString $pdb.maxUnavailable }}{{ end }}
{{- if and $pdb.enabled (eq $min "") (eq $max "") }}
{{- fail "podDisruptionBudget needs minAvailable or maxUnavailable" }}
{{- end }}
{{- /*
A budget that allows no eviction at the usual pod count blocks every node drain for good. The
count is replicaCount, or autoscaling.minReplicas (where the HPA rests when idle); percentages
are rounded up, as the disruption controller does for both fields.
*/}}
{{- if $pdb.enabled }}
{{- $pods := int .Values.replicaCount }}
{{- $podsFrom := "replicaCount" }}
{{- if .Values.autoscaling.enabled }}
{{- $pods = int .Values.autoscaling.minReplicas }}
{{- $podsFrom = "autoscaling.minReplicas" }}
{{- end }}
{{- if ne $min "" }}
{{- $needed := int $min }}
{{- if hasSuffix "%" $min }}
{{- $needed = div (add (mul $pods (int (trimSuffix "%" $min))) 99) 100 }}
{{- end }}
{{- if ge $needed $pods }}
{{- fail (printf "podDisruptionBudget.minAvailable %s needs %d of the %d pods (%s) available: no pod could ever be evicted, so every node drain would wait forever. Keep it below %d, or leave it empty and use maxUnavailable" $min $needed $pods $podsFrom $pods) }}
{{- end }}
{{- else }}
{{- $evictable := int $max }}
{{- if hasSuffix "%" $max }}
{{- $evictable = div (add (mul $pods (int (trimSuffix "%" $max))) 99) 100 }}
{{- end }}
{{- if lt $evictable 1 }}
{{- fail (printf "podDisruptionBudget.maxUnavailable %s lets no pod be evicted: every node drain would wait forever. Allow at least 1 (the default), or set podDisruptionBudget.enabled: false" $max) }}
{{- end }}
{{- end }}
{{- end }}
{{- /*
Required values last, so a values file that breaks a rule above is told about that rule even
when it sets nothing else.
*/}}
{{- if not .Values.image.repository }}
{{- fail (printf "image.repository is required: the scan-gateway image is not published. Build it from the repository's Dockerfile, push it to your registry and set image.repository (e.g. --set image.repository=registry.example.com/security/scan-gateway); image.tag defaults to the chart's appVersion (%s)" .Chart.AppVersion) }}
{{- end }}
{{- if eq (len $sources) 0 }}
{{- fail "no Azure credential: the gateway could get no Defender token and its pods would exit. Set one: a client secret from an existing Secret (azure.clientSecret.existingSecret, its key azure.clientSecret.existingSecretKey), a certificate (azure.clientCertificate.existingSecret and azure.clientCertificate.existingSecretKey: one PEM with the certificate and its key), or Azure workload identity (azure.workloadIdentity.enabled: true); each with azure.clientId and azure.tenantId (which workload identity may leave to its webhook)" }}
{{- end }}
{{- /* Last: a credential without caller authentication is an open door (as `serve` refuses). */}}
{{- if and (gt (len $sources) 0) (not .Values.tls.clientCA.enabled) (not .Values.gateway.allowUnauthenticated) }}
{{- fail "callers are not authenticated: anyone reaching the port could scan and cancel on every device of the tenant. Turn on mutual TLS (tls.enabled and tls.clientCA.enabled), or set gateway.allowUnauthenticated: true on purpose" }}
{{- end }}
{{- end }}
