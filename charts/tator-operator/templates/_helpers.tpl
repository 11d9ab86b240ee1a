{{/* Name of the chart, or nameOverride. */}}
{{- define "tator-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "tator-operator.fullname" -}}
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

{{/* Cluster-scoped objects carry the release namespace: two releases of the same name in two
namespaces must not share a ClusterRole. */}}
{{- define "tator-operator.clusterName" -}}
{{- printf "%s-%s" (include "tator-operator.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "tator-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tator-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tator-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tator-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tator
{{- end }}

{{- define "tator-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tator-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces a namespace-scoped operator watches, comma-separated: watchNamespaces, else
watchNamespace, else the release namespace. */}}
{{- define "tator-operator.watchNamespace" -}}
{{- if .Values.watchNamespaces }}
{{- join "," .Values.watchNamespaces }}
{{- else }}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}
{{- end }}

{{- define "tator-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator does with TatorDeployments and their children, in the watched namespace (a
Role) or in every namespace (a ClusterRole). Each rule names the code that needs it
(crates/tator-operator/src). Secrets: get, create and patch by name only; never list or watch.
*/}}
{{- define "tator-operator.rules" -}}
# controller.rs watches TatorDeployments (list, watch).
- apiGroups: [tator.io]
  resources: [tatordeployments]
  verbs: [list, watch]
# controller.rs adds and removes its job-cluster finalizer (tator.io/job-clusters) with a
# server-side apply of metadata.finalizers (patch), when spec.jobClusters is set.
- apiGroups: [tator.io]
  resources: [tatordeployments]
  verbs: [patch]
# controller.rs writes the status with server-side apply (patch_status).
- apiGroups: [tator.io]
  resources: [tatordeployments/status]
  verbs: [patch]
# Children carry a controller ownerReference with blockOwnerDeletion; clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: [tator.io]
  resources: [tatordeployments/finalizers]
  verbs: [update]
# apply.rs: server-side apply of the workloads (create, patch); controller.rs owns them (list,
# watch); prune deletes the ones no longer desired (delete). DaemonSets: Filebeat (logging).
# Deployments and StatefulSets are cached without their pod spec: after a spec change by someone
# else, or a restart, apply reads one whole by name (get) before deciding to write.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, list, watch, create, patch, delete]
# apply.rs: the ServiceAccounts of Filebeat and the operator's own Prometheus are applied, owned
# (list, watch) and pruned like workloads.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch, delete]
# apply.rs: the Roles and RoleBindings of Filebeat and the operator's own Prometheus (read pods of
# the namespace) are applied, owned (list, watch) and pruned like workloads.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch, delete]
# The Roles above let Filebeat and Prometheus read pods (metadata, discovery); RBAC lets the
# operator grant only what it holds itself. The operator itself never reads pods.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# controller.rs reads the PodSecurity label of the TatorDeployment's namespace before Filebeat is
# created (get; without it, namespace-scoped installs skip the check).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get]
# controller/crds.rs watches whether the third-party CRDs the operator uses are installed (one
# watch per name; without it, namespace-scoped installs ask at each reconcile instead).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  resourceNames:
    - certificates.cert-manager.io
    - servicemonitors.monitoring.coreos.com
    - podmonitors.monitoring.coreos.com
    - workflowtemplates.argoproj.io
    - scaledobjects.keda.sh
  verbs: [list, watch]
# controller.rs lists StorageClasses to find the cluster's default one, Tator's
# WORKFLOW_STORAGE_CLASSES when the spec names none (list; without it, namespace-scoped installs
# leave it to workflows.storageClasses).
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [list]
# apply.rs: prometheus-operator ServiceMonitors and PodMonitors (monitoring) are read back (get),
# applied (create, patch) and pruned (list, delete); controller.rs lists them to see whether the
# CRDs exist.
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, podmonitors]
  verbs: [get, list, create, patch, delete]
# builders/transcodes.rs: with transcodes.workers.autoscaling, KEDA ScaledObjects are read back
# (get), applied (create, patch) and pruned (list, delete); controller.rs lists them to see
# whether KEDA's CRDs exist.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, create, patch, delete]
# scaler.rs: without KEDA, the operator's own scaler reads and writes the workers' replicas
# through the scale subresource.
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [get, patch]
# apply.rs: Services and ConfigMaps (nginx.conf) are applied, owned and pruned like workloads.
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [list, watch, create, patch, delete]
# apply.rs: the shared claim is applied; controller.rs watches claims (list, watch). Claims hold
# data: the only one the operator deletes is the claim of its own Prometheus (metrics), when
# monitoring no longer needs it.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, watch, create, patch, delete]
# apply.rs: migration and bucket Jobs are applied, read back by name (get_job), owned and pruned.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# apply.rs: the maintenance CronJobs (spec.maintenance) are applied, owned (metadata only) and
# pruned, and read whole by name (get) after a spec change by someone else or a restart.
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [get, list, watch, create, patch, delete]
# apply.rs: the API's HorizontalPodAutoscaler (api.autoscaling) is applied, owned and pruned.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# apply.rs: PodDisruptionBudgets of the API and NGINX are applied, owned and pruned.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
# builders/transcodes.rs: the NetworkPolicy that admits only the transcode service and workers to
# their queue's Redis is applied, owned and pruned.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
# Secrets by name only: apply.rs creates generated Secrets and fixes their metadata (create,
# patch), objstore.rs applies the composed bucket Secrets (patch) and reads credentials Secrets
# (get), checks.rs reads managed-service passwords (get), dependencies.rs hashes referenced
# Secrets' resourceVersions (get). job_clusters.rs reads kubeconfig Secrets and the Secrets it
# copies to job clusters (get), and writes the remote transcode Secret (patch), deleted when no
# job cluster runs transcodes (delete). No list, no watch.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch, delete]
# apply.rs: Argo WorkflowTemplates (transcode, archive import) are read back (get), applied
# (create, patch) and pruned (list, delete); controller.rs lists them to see whether Argo's CRDs
# exist. The REST API's submit Role grants get and list on them.
- apiGroups: [argoproj.io]
  resources: [workflowtemplates]
  verbs: [get, list, create, patch, delete]
# builders/workflows.rs: the Roles of workflow pods (workflowtaskresults: create, patch) and of
# Tator's REST API (workflows: create, get, list, delete) grant these; RBAC lets the operator
# grant only what it holds. The operator itself never creates or reads workflows.
- apiGroups: [argoproj.io]
  resources: [workflows]
  verbs: [create, get, list, delete]
# builders/workflows.rs: the workflow pods' Role grants this (Argo's executor records step results).
- apiGroups: [argoproj.io]
  resources: [workflowtaskresults]
  verbs: [create, patch]
# apply.rs: cert-manager Certificates for tls.issuerRef are read back (get), applied (create,
# patch) and pruned (list, delete).
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [get, list, create, patch, delete]
# controller.rs: the shared event Recorder publishes events.k8s.io Events and patches their
# series (create, patch).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
