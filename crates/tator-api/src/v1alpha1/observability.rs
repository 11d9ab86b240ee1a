//! Logging (Filebeat, Kibana) and monitoring (Prometheus, Grafana): Tator's administration stack.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PodSettings, VolumeSettings};

// Maintainer note: both stacks are off by default so that a minimal manifest stays light; each
// part has its own switch under the stack's `enabled`.

/// Logs of Tator's pods shipped to Elasticsearch by Filebeat, kept retentionDays days and shown
/// by Kibana at /logs to Django staff users.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// Run the logging stack. Off by default.
    #[serde(default)]
    pub enabled: bool,

    /// Days log records are kept: Filebeat installs an Elasticsearch index lifecycle policy that
    /// deletes older log indices.
    #[serde(default = "default_log_retention")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: i32,

    /// Filebeat, one pod per node, reading the container logs of this namespace's pods from the
    /// node (hostPath /var/log/containers and /var/log/pods). Host paths are not allowed by
    /// PodSecurity baseline or restricted: the namespace must enforce privileged, otherwise the
    /// LoggingReady condition says FilebeatForbidden and no Filebeat pod is created.
    #[serde(default)]
    pub filebeat: Filebeat,

    /// Kibana at /logs (Django staff only), with the filebeat-* data view created by the
    /// operator.
    #[serde(default)]
    pub kibana: Kibana,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            enabled: false,
            retention_days: default_log_retention(),
            filebeat: Filebeat::default(),
            kibana: Kibana::default(),
        }
    }
}

fn default_log_retention() -> i32 {
    7
}

fn default_true() -> bool {
    true
}

/// Filebeat settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Filebeat {
    /// Run Filebeat (when logging is enabled).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Image, resources and placement (default image docker.elastic.co/beats/filebeat:8.15.5).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for Filebeat {
    fn default() -> Self {
        Self {
            enabled: true,
            pod: PodSettings::default(),
        }
    }
}

/// Kibana settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Kibana {
    /// Run Kibana (when logging is enabled).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Image, resources and placement (default image docker.elastic.co/kibana/kibana:8.15.5).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for Kibana {
    fn default() -> Self {
        Self {
            enabled: true,
            pod: PodSettings::default(),
        }
    }
}

/// Metrics of the REST API (gunicorn, through a statsd exporter) and NGINX (an exporter
/// sidecar), collected by Prometheus and shown by Grafana at /grafana to Django staff users.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// Run the monitoring stack. Off by default.
    #[serde(default)]
    pub enabled: bool,

    /// Where metrics go. When prometheus-operator's ServiceMonitor and PodMonitor CRDs are
    /// installed, the operator creates a ServiceMonitor and a PodMonitor for the cluster's
    /// Prometheus; otherwise it runs a Prometheus of its own with a volume, served at
    /// /prometheus (Django staff only).
    #[serde(default)]
    pub prometheus: PrometheusSettings,

    /// The statsd exporter gunicorn sends its request metrics to.
    #[serde(default)]
    pub statsd_exporter: PodSettings,

    /// Grafana at /grafana (Django staff only) with a Prometheus data source and a Tator
    /// dashboard.
    #[serde(default)]
    pub grafana: Grafana,
}

/// Prometheus settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSettings {
    /// Extra labels on the ServiceMonitor and PodMonitor, to match the serviceMonitorSelector
    /// and podMonitorSelector of the cluster's Prometheus (kube-prometheus-stack selects
    /// release: <its release name>).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub monitor_labels: BTreeMap<String, String>,

    /// URL of the cluster's Prometheus, Grafana's data source when the ServiceMonitor path is
    /// taken. Default: kube-prometheus-stack's Service in namespace monitoring.
    #[serde(default = "default_cluster_prometheus")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("monitoring.prometheus.url must start with http:// or https://"))]
    #[schemars(length(min = 1, max = 512))]
    pub url: String,

    /// The volume of the operator's own Prometheus (used without prometheus-operator).
    #[serde(default = "default_prometheus_volume")]
    pub storage: VolumeSettings,

    /// Days the operator's own Prometheus keeps samples.
    #[serde(default = "default_metrics_retention")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: i32,

    /// Image, resources and placement of the operator's own Prometheus (default image
    /// prom/prometheus:v3.5.0).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for PrometheusSettings {
    fn default() -> Self {
        Self {
            monitor_labels: BTreeMap::new(),
            url: default_cluster_prometheus(),
            storage: default_prometheus_volume(),
            retention_days: default_metrics_retention(),
            pod: PodSettings::default(),
        }
    }
}

fn default_cluster_prometheus() -> String {
    "http://prometheus-operated.monitoring.svc:9090".into()
}

fn default_prometheus_volume() -> VolumeSettings {
    VolumeSettings {
        size: "10Gi".into(),
        storage_class_name: None,
    }
}

fn default_metrics_retention() -> i32 {
    15
}

/// Grafana settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Grafana {
    /// Run Grafana (when monitoring is enabled).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Grafana role of Django staff users. NGINX lets only staff through (auth_request
    /// /auth-admin) and signs them in with Grafana's auth proxy; there is no anonymous access
    /// and never an Admin role.
    #[serde(default)]
    pub staff_role: GrafanaRole,
    /// Image, resources and placement (default image grafana/grafana:11.6.0).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for Grafana {
    fn default() -> Self {
        Self {
            enabled: true,
            staff_role: GrafanaRole::default(),
            pod: PodSettings::default(),
        }
    }
}

/// A Grafana organization role below Admin.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GrafanaRole {
    /// Read dashboards.
    #[default]
    Viewer,
    /// Read and edit dashboards.
    Editor,
}

impl GrafanaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "Viewer",
            Self::Editor => "Editor",
        }
    }
}
