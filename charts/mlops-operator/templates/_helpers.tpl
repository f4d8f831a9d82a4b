{{/* The chart name, truncated to the 63 characters a label value allows. */}}
{{- define "mlops-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the prefix of every object the chart creates. */}}
{{- define "mlops-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mlops-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "mlops-operator.labels" -}}
helm.sh/chart: {{ include "mlops-operator.chart" . }}
app.kubernetes.io/name: {{ include "mlops-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlops-operator
{{- end -}}

{{/* Selector labels of the operator's pod (immutable once installed: keep them few). */}}
{{- define "mlops-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlops-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mlops-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlops-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag of one of the three images; the tag defaults to the appVersion. */}}
{{- define "mlops-operator.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "mlops-operator.mlflowName" -}}
{{- printf "%s-mlflow" (include "mlops-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The MLflow URI the operator uses and hands to its pods: the configured one, else the
embedded server, else the operator's own default (an MLflow Service in mlops-system). */}}
{{- define "mlops-operator.mlflowTrackingUri" -}}
{{- if regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@" .Values.config.mlflowTrackingUri -}}
{{- fail "config.mlflowTrackingUri must not carry credentials (user:password@host): they would be copied into every pod spec. Put MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in a Secret and set config.mlflowCredentialsSecret" -}}
{{- end -}}
{{- if .Values.config.mlflowTrackingUri -}}
{{- .Values.config.mlflowTrackingUri -}}
{{- else if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "mlops-operator.mlflowName" .) .Release.Namespace (int .Values.mlflow.port) -}}
{{- else -}}
http://mlflow.mlops-system.svc:5000
{{- end -}}
{{- end -}}

{{/* The rules of everything the operator does inside the namespaces it watches. */}}
{{- define "mlops-operator.namespacedRules" -}}
# Least privilege: each verb below is one the operator uses (tests/test_rbac_audit.py replays
# every request it makes against these rules, and fails on any grant nothing uses).
# Its own resources: kopf watches them and patches finalizers and annotations; the operator
# clears a handled rollout command; a training run creates its ModelVersion.
- apiGroups: ["mlops.dev"]
  resources: ["trainingjobs", "modelversions", "inferenceservices"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["mlops.dev"]
  resources: ["modelversions"]
  verbs: ["create"]
- apiGroups: ["mlops.dev"]
  resources: ["trainingjobs/status", "modelversions/status", "inferenceservices/status"]
  verbs: ["patch"]
# What the operator reads below it lists and watches once (kopf indexes: its cache), so a
# converged object costs no request; "get" is the fallback after a create finds a name taken.
# Training runs (patch: a run restarted under the name of a Job that differs).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Training runs of engine: Ray, as KubeRay RayJobs (harmless where KubeRay is not installed).
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Reads only: the pods of training runs and model servers (exit codes, readiness, /monitoring).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Serving: one Deployment + Service per model version, the stable Service, HPA, PDB.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# traffic.router GatewayAPI: one HTTPRoute per InferenceService, weighted across versions.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "create", "patch", "delete"]
# Events: kopf and the operator post core/v1 Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* What only exists cluster-wide: kopf scans CRDs to find its resources; with watchNamespaces
it also lists and watches namespaces (to follow the ones that match). */}}
{{- define "mlops-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}
