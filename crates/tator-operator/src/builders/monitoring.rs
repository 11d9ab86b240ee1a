//! Monitoring: the statsd exporter gunicorn reports to, the NGINX exporter sidecar, and either
//! prometheus-operator's ServiceMonitor and PodMonitor (when its CRDs are installed) or a
//! Prometheus of the operator's own (Deployment, claim, scrape configuration, `/prometheus`);
//! Grafana at `/grafana` with a provisioned data source and dashboard.
//!
//! Grafana has no anonymous access: NGINX lets only Django staff through (`auth_request
//! /auth-admin`) and then names them to Grafana's auth proxy with a fixed user,
//! [`GRAFANA_STAFF_USER`], whose role is `monitoring.grafana.staffRole` (never Admin).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
            EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, Probe,
            SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume,
            VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use tator_api::labels;

use super::{
    children::Children,
    common::*,
    features::monitoring_enabled,
    names::{NGINX, STUB_STATUS_PORT},
};
use crate::validate::ValidatedTator;

pub const STATSD_EXPORTER: &str = "statsd-exporter";
pub const PROMETHEUS: &str = "prometheus";
pub const GRAFANA: &str = "grafana";
pub const NGINX_EXPORTER: &str = "nginx-exporter";
pub const STATSD_IMAGE: &str = "prom/statsd-exporter:v0.28.0";
pub const NGINX_EXPORTER_IMAGE: &str = "nginx/nginx-prometheus-exporter:1.4.1";
pub const PROMETHEUS_IMAGE: &str = "prom/prometheus:v3.5.0";
pub const GRAFANA_IMAGE: &str = "grafana/grafana:11.6.0";
pub const STATSD_PORT: i32 = 9125;
pub const STATSD_METRICS_PORT: i32 = 9102;
pub const NGINX_EXPORTER_PORT: i32 = 9113;
pub const PROMETHEUS_PORT: i32 = 9090;
pub const GRAFANA_PORT: i32 = 3000;
pub const PROMETHEUS_PATH: &str = "/prometheus";
pub const GRAFANA_PATH: &str = "/grafana";
/// Header Grafana's auth proxy reads the user from; NGINX sets it after the staff check.
pub const GRAFANA_AUTH_HEADER: &str = "X-WEBAUTH-USER";
/// The Grafana user every Django staff member is signed in as.
pub const GRAFANA_STAFF_USER: &str = "tator-staff";
/// uid of the Grafana dashboard and the data source.
pub const DASHBOARD_UID: &str = "tator";
pub const DATASOURCE_UID: &str = "prometheus";
/// Key of Grafana's generated admin password (used by no one: the login form is off).
pub const GRAFANA_ADMIN_PASSWORD_KEY: &str = "adminPassword";
/// Scrape interval everywhere.
pub const SCRAPE_INTERVAL: &str = "15s";
const NOBODY: i64 = 65534;
const GRAFANA_UID: i64 = 472;

/// Whether the operator runs its own Prometheus (monitoring on, no prometheus-operator).
pub fn own_prometheus(t: &ValidatedTator) -> bool {
    monitoring_enabled(t) && !t.cluster.prometheus_operator
}

/// Whether Grafana runs.
pub fn grafana_wanted(t: &ValidatedTator) -> bool {
    monitoring_enabled(t) && t.spec.monitoring.grafana.enabled
}

/// prometheus-operator's ServiceMonitor (`monitoring.coreos.com/v1`).
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// prometheus-operator's PodMonitor (`monitoring.coreos.com/v1`).
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

/// `host:port` of the statsd exporter, gunicorn's `--statsd-host`.
pub fn statsd_host(t: &ValidatedTator) -> Option<String> {
    monitoring_enabled(t).then(|| format!("{}:{STATSD_PORT}", t.child_name(STATSD_EXPORTER)))
}

/// The Grafana Secret generated once (its admin password).
pub fn generated_secret(t: &ValidatedTator) -> Option<GeneratedSecret> {
    grafana_wanted(t).then(|| GeneratedSecret {
        name: t.child_name(GRAFANA),
        component: GRAFANA,
        fixed: BTreeMap::new(),
        random: vec![(GRAFANA_ADMIN_PASSWORD_KEY.into(), 32)],
    })
}

/// Everything of the monitoring stack (the NGINX sidecar is added by the NGINX builder).
pub fn build(t: &ValidatedTator) -> Children {
    let mut d = Children::default();
    if !monitoring_enabled(t) {
        return d;
    }
    d.services.push(statsd_service(t));
    d.deployments.push(statsd_deployment(t));
    if own_prometheus(t) {
        let (sa, role, binding) = pod_reader(t, PROMETHEUS);
        d.service_accounts.push(sa);
        d.roles.push(role);
        d.role_bindings.push(binding);
        let conf = prometheus_config_map(t);
        d.deployments.push(prometheus_deployment(t, &conf));
        d.config_maps.push(conf);
        d.claims.push(prometheus_claim(t));
        d.services
            .push(cluster_service(t, PROMETHEUS, "http", PROMETHEUS_PORT));
    } else {
        d.service_monitors.push(service_monitor(t));
        d.pod_monitors.push(pod_monitor(t));
    }
    if grafana_wanted(t) {
        let conf = grafana_config_map(t);
        d.deployments.push(grafana_deployment(t, &conf));
        d.config_maps.push(conf);
        d.services
            .push(cluster_service(t, GRAFANA, "http", GRAFANA_PORT));
    }
    d
}

/// NGINX routes: `/grafana/` (staff, signed in to Grafana's auth proxy) and, with the
/// operator's own Prometheus, `/prometheus/` (staff).
pub fn routes(t: &ValidatedTator) -> Vec<ProxyRoute> {
    let mut out = Vec::new();
    if grafana_wanted(t) {
        // Grafana serves from its sub-path: the prefix is passed on.
        out.push(ProxyRoute {
            path: format!("{GRAFANA_PATH}/"),
            upstream: format!("{}:{GRAFANA_PORT}", t.child_name(GRAFANA)),
            guard: Guard::Staff,
            object_store: false,
            headers: vec![(GRAFANA_AUTH_HEADER.into(), GRAFANA_STAFF_USER.into())],
        });
    }
    if own_prometheus(t) {
        // Prometheus serves at / (--web.route-prefix=/): the trailing slash strips the prefix.
        out.push(ProxyRoute {
            path: format!("{PROMETHEUS_PATH}/"),
            upstream: format!("{}:{PROMETHEUS_PORT}/", t.child_name(PROMETHEUS)),
            guard: Guard::Staff,
            object_store: false,
            headers: vec![],
        });
    }
    out
}

fn statsd_service(t: &ValidatedTator) -> Service {
    Service {
        metadata: child_meta(t, t.child_name(STATSD_EXPORTER), STATSD_EXPORTER, None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(t, STATSD_EXPORTER)),
            ports: Some(vec![
                ServicePort {
                    name: Some("statsd".into()),
                    port: STATSD_PORT,
                    target_port: Some(IntOrString::String("statsd".into())),
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: STATSD_METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

fn tcp_probe(port: &str, initial: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn http_probe(path: &str, initial: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

fn simple_deployment(
    t: &ValidatedTator,
    component: &str,
    spec: PodSpec,
    annotations: BTreeMap<String, String>,
    pod: &tator_api::PodSettings,
    recreate: bool,
) -> Deployment {
    Deployment {
        metadata: child_meta(t, t.child_name(component), component, None),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: label_selector(t, component),
            strategy: recreate.then(|| DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            template: pod_template(t, component, None, spec, annotations, pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// The statsd exporter: receives gunicorn's statsd packets (UDP and TCP 9125) and serves them as
/// Prometheus metrics on 9102.
pub fn statsd_deployment(t: &ValidatedTator) -> Deployment {
    let pod = &t.spec.monitoring.statsd_exporter;
    let mut c = container(
        STATSD_EXPORTER,
        pod.image.clone().unwrap_or_else(|| STATSD_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.args = Some(vec![
        format!("--statsd.listen-udp=:{STATSD_PORT}"),
        format!("--statsd.listen-tcp=:{STATSD_PORT}"),
        format!("--web.listen-address=:{STATSD_METRICS_PORT}"),
    ]);
    c.ports = Some(vec![
        ContainerPort {
            name: Some("statsd".into()),
            container_port: STATSD_PORT,
            protocol: Some("UDP".into()),
            ..Default::default()
        },
        ContainerPort {
            name: Some("metrics".into()),
            container_port: STATSD_METRICS_PORT,
            ..Default::default()
        },
    ]);
    c.readiness_probe = Some(tcp_probe("metrics", 2));
    c.liveness_probe = Some(tcp_probe("metrics", 20));
    c.resources = Some(resources_or(pod, requirements("50m", "64Mi", "256Mi")));
    let spec = PodSpec {
        containers: vec![c],
        security_context: Some(pod_security(NOBODY)),
        ..Default::default()
    };
    simple_deployment(t, STATSD_EXPORTER, spec, BTreeMap::new(), pod, false)
}

/// The exporter sidecar of the NGINX pods: reads `stub_status` on loopback, serves metrics on
/// the port named `metrics`.
pub fn nginx_exporter(t: &ValidatedTator) -> Option<Container> {
    if !monitoring_enabled(t) {
        return None;
    }
    let mut c = container(
        NGINX_EXPORTER,
        NGINX_EXPORTER_IMAGE.into(),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.args = Some(vec![
        format!(
            "--nginx.scrape-uri=http://127.0.0.1:{}/stub_status",
            STUB_STATUS_PORT
        ),
        format!("--web.listen-address=:{NGINX_EXPORTER_PORT}"),
    ]);
    c.ports = Some(vec![ContainerPort {
        name: Some("metrics".into()),
        container_port: NGINX_EXPORTER_PORT,
        ..Default::default()
    }]);
    c.resources = Some(requirements("20m", "32Mi", "128Mi"));
    Some(c)
}

/// Labels of the ServiceMonitor and PodMonitor: ours plus `monitoring.prometheus.monitorLabels`.
fn monitor_meta(t: &ValidatedTator, name: String, component: &str) -> kube::api::ObjectMeta {
    let mut meta = child_meta(t, name, component, None);
    if let Some(l) = meta.labels.as_mut() {
        for (k, v) in &t.spec.monitoring.prometheus.monitor_labels {
            l.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    meta
}

/// The ServiceMonitor for the statsd exporter (gunicorn's metrics).
pub fn service_monitor(t: &ValidatedTator) -> DynamicObject {
    let name = t.child_name(STATSD_EXPORTER);
    let mut obj = DynamicObject::new(&name, &service_monitor_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(t, STATSD_EXPORTER)},
            "namespaceSelector": {"matchNames": [t.namespace]},
            "targetLabels": [labels::INSTANCE],
            "endpoints": [{"port": "metrics", "interval": SCRAPE_INTERVAL, "path": "/metrics"}]
        }
    }));
    obj.metadata = monitor_meta(t, name, STATSD_EXPORTER);
    obj
}

/// The PodMonitor for the NGINX exporter sidecars.
pub fn pod_monitor(t: &ValidatedTator) -> DynamicObject {
    let name = t.child_name(NGINX);
    let mut obj = DynamicObject::new(&name, &pod_monitor_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(t, NGINX)},
            "namespaceSelector": {"matchNames": [t.namespace]},
            "podTargetLabels": [labels::INSTANCE],
            "podMetricsEndpoints": [{"port": "metrics", "interval": SCRAPE_INTERVAL, "path": "/metrics"}]
        }
    }));
    obj.metadata = monitor_meta(t, name, NGINX);
    obj
}

/// The label prometheus-operator derives from `app.kubernetes.io/instance` (targetLabels),
/// which the operator's own scrape configuration sets too, so that the dashboard's queries are
/// the same on both paths.
pub const INSTANCE_LABEL: &str = "app_kubernetes_io_instance";

/// prometheus.yml of the operator's own Prometheus.
pub fn prometheus_yml(t: &ValidatedTator) -> String {
    let labels = json!({"namespace": t.namespace, INSTANCE_LABEL: t.name});
    let nginx_selector = format!(
        "{}={},{}={}",
        labels::INSTANCE,
        t.name,
        labels::COMPONENT,
        NGINX
    );
    let conf = json!({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [format!("localhost:{PROMETHEUS_PORT}")], "labels": labels}]
            },
            {
                "job_name": t.child_name(STATSD_EXPORTER),
                "static_configs": [{
                    "targets": [format!("{}:{STATSD_METRICS_PORT}", t.child_name(STATSD_EXPORTER))],
                    "labels": labels
                }]
            },
            {
                "job_name": t.child_name(NGINX),
                "kubernetes_sd_configs": [{
                    "role": "pod",
                    "namespaces": {"names": [t.namespace]},
                    "selectors": [{"role": "pod", "label": nginx_selector}]
                }],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "action": "keep", "regex": "metrics"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"], "target_label": INSTANCE_LABEL}
                ]
            }
        ]
    });
    serde_yaml::to_string(&conf).unwrap_or_default()
}

pub fn prometheus_config_map(t: &ValidatedTator) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(t, t.child_name("prometheus-config"), PROMETHEUS, None),
        data: Some(BTreeMap::from([(
            "prometheus.yml".to_string(),
            prometheus_yml(t),
        )])),
        ..Default::default()
    }
}

/// The claim of the operator's own Prometheus. Owned by the TatorDeployment: metrics are not
/// kept when it is deleted, and the claim is deleted when the own Prometheus is no longer
/// wanted.
pub fn prometheus_claim(t: &ValidatedTator) -> PersistentVolumeClaim {
    let v = &t.spec.monitoring.prometheus.storage;
    PersistentVolumeClaim {
        metadata: child_meta(t, t.child_name(PROMETHEUS), PROMETHEUS, None),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: v.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(v.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn prometheus_deployment(t: &ValidatedTator, conf: &ConfigMap) -> Deployment {
    let s = &t.spec.monitoring.prometheus;
    let mut c = container(
        PROMETHEUS,
        s.pod
            .image
            .clone()
            .unwrap_or_else(|| PROMETHEUS_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.args = Some(vec![
        "--config.file=/etc/prometheus/prometheus.yml".into(),
        "--storage.tsdb.path=/prometheus".into(),
        format!("--storage.tsdb.retention.time={}d", s.retention_days),
        format!("--web.external-url={}/", public_url(t, PROMETHEUS_PATH)),
        "--web.route-prefix=/".into(),
    ]);
    c.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: PROMETHEUS_PORT,
        ..Default::default()
    }]);
    c.volume_mounts = Some(vec![
        VolumeMount {
            name: "config".into(),
            mount_path: "/etc/prometheus".into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "data".into(),
            mount_path: "/prometheus".into(),
            ..Default::default()
        },
    ]);
    c.readiness_probe = Some(http_probe("/-/ready", 5));
    c.liveness_probe = Some(http_probe("/-/healthy", 30));
    c.resources = Some(resources_or(&s.pod, requirements("200m", "512Mi", "2Gi")));
    let spec = PodSpec {
        containers: vec![c],
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: t.child_name("prometheus-config"),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: t.child_name(PROMETHEUS),
                    read_only: None,
                }),
                ..Default::default()
            },
        ]),
        service_account_name: Some(t.child_name(PROMETHEUS)),
        security_context: Some(pod_security(NOBODY)),
        ..Default::default()
    };
    let hash = serde_json::to_vec(&conf.data).unwrap_or_default();
    let annotations = BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), short_hash(&hash, 16))]);
    // One writer of the volume at a time.
    simple_deployment(t, PROMETHEUS, spec, annotations, &s.pod, true)
}

/// The Prometheus Grafana reads: the operator's own, or the cluster's.
pub fn datasource_url(t: &ValidatedTator) -> String {
    if own_prometheus(t) {
        format!("http://{}:{PROMETHEUS_PORT}", t.child_name(PROMETHEUS))
    } else {
        t.spec.monitoring.prometheus.url.clone()
    }
}

/// grafana.ini: served under `/grafana`, signed in only through the auth proxy, no anonymous
/// access, no login form, no basic auth, no phoning home.
pub fn grafana_ini(t: &ValidatedTator) -> String {
    let role = t.spec.monitoring.grafana.staff_role.as_str();
    let root = public_url(t, GRAFANA_PATH);
    let secure = t.spec.tls.is_some();
    format!(
        "# Generated by tator-operator. Edits are overwritten.
[server]
http_port = {GRAFANA_PORT}
root_url = {root}/
serve_from_sub_path = true

[log]
mode = console

[analytics]
reporting_enabled = false
check_for_updates = false
check_for_plugin_updates = false

[security]
cookie_secure = {secure}
disable_gravatar = true

[users]
allow_sign_up = false
allow_org_create = false
auto_assign_org = true
auto_assign_org_role = {role}

[auth]
disable_login_form = true
disable_signout_menu = true

[auth.basic]
enabled = false

[auth.anonymous]
enabled = false

[auth.proxy]
enabled = true
header_name = {GRAFANA_AUTH_HEADER}
header_property = username
auto_sign_up = true
enable_login_token = false

[news]
news_feed_enabled = false
"
    )
}

/// The provisioned data source.
pub fn grafana_datasources(t: &ValidatedTator) -> String {
    let v = json!({
        "apiVersion": 1,
        "datasources": [{
            "name": "Prometheus",
            "uid": DATASOURCE_UID,
            "type": "prometheus",
            "access": "proxy",
            "url": datasource_url(t),
            "isDefault": true,
            "editable": false
        }]
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// Folder grafana.ini is mounted in (`GF_PATHS_CONFIG`).
pub const GRAFANA_INI_DIR: &str = "/etc/grafana-tator";

/// Folder in the Grafana pod the dashboards are read from.
pub const DASHBOARDS_DIR: &str = "/var/lib/grafana/dashboards";

/// The dashboard provider reading [`DASHBOARDS_DIR`].
pub fn grafana_dashboard_provider() -> String {
    let v = json!({
        "apiVersion": 1,
        "providers": [{
            "name": "tator",
            "folder": "Tator",
            "type": "file",
            "disableDeletion": true,
            "allowUiUpdates": false,
            "options": {"path": DASHBOARDS_DIR, "foldersFromFilesStructure": false}
        }]
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// The dashboard's panels: title, unit, PromQL with `SEL` standing for this installation's
/// label selector.
const PANELS: &[(&str, &str, &str)] = &[
    (
        "REST API requests per second",
        "reqps",
        "sum(rate(gunicorn_requests{SEL}[5m]))",
    ),
    (
        "REST API request duration, 99th percentile",
        "ms",
        "max(gunicorn_request_duration{SEL,quantile=\"0.99\"})",
    ),
    ("gunicorn workers", "none", "sum(gunicorn_workers{SEL})"),
    (
        "NGINX requests per second",
        "reqps",
        "sum(rate(nginx_http_requests_total{SEL}[5m]))",
    ),
    (
        "NGINX active connections",
        "none",
        "sum(nginx_connections_active{SEL})",
    ),
    ("Scrape targets up", "none", "sum by (job) (up{SEL})"),
];

/// The PromQL expressions of the Tator dashboard.
pub fn dashboard_queries(t: &ValidatedTator) -> Vec<String> {
    let sel = format!(
        "namespace=\"{}\",{INSTANCE_LABEL}=\"{}\"",
        t.namespace, t.name
    );
    PANELS
        .iter()
        .map(|(_, _, q)| q.replace("SEL", &sel))
        .collect()
}

/// The Tator dashboard (Grafana's dashboard JSON model).
pub fn grafana_dashboard(t: &ValidatedTator) -> Value {
    let panels: Vec<Value> = PANELS
        .iter()
        .zip(dashboard_queries(t))
        .enumerate()
        .map(|(i, ((title, unit, _), expr))| {
            let i = i as i64;
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{
                    "refId": "A",
                    "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
                    "expr": expr
                }]
            })
        })
        .collect();
    json!({
        "uid": DASHBOARD_UID,
        "title": format!("Tator ({}/{})", t.namespace, t.name),
        "tags": ["tator"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": false,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": panels
    })
}

pub fn grafana_config_map(t: &ValidatedTator) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(t, t.child_name("grafana-config"), GRAFANA, None),
        data: Some(BTreeMap::from([
            ("grafana.ini".to_string(), grafana_ini(t)),
            ("datasources.yaml".to_string(), grafana_datasources(t)),
            ("dashboards.yaml".to_string(), grafana_dashboard_provider()),
            ("tator.json".to_string(), grafana_dashboard(t).to_string()),
        ])),
        ..Default::default()
    }
}

fn item(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        ..Default::default()
    }
}

pub fn grafana_deployment(t: &ValidatedTator, conf: &ConfigMap) -> Deployment {
    let s = &t.spec.monitoring.grafana;
    let mut c = container(
        GRAFANA,
        s.pod.image.clone().unwrap_or_else(|| GRAFANA_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.env = Some(vec![
        env("GF_PATHS_CONFIG", format!("{GRAFANA_INI_DIR}/grafana.ini")),
        env("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning"),
        EnvVar {
            name: "GF_SECURITY_ADMIN_PASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: t.child_name(GRAFANA),
                    key: GRAFANA_ADMIN_PASSWORD_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    c.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: GRAFANA_PORT,
        ..Default::default()
    }]);
    let cm = |name: &str, items: Vec<KeyToPath>| Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: t.child_name("grafana-config"),
            items: Some(items),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    c.volume_mounts = Some(vec![
        // Not under /etc/grafana: a mount point inside a read-only ConfigMap volume cannot be
        // created.
        mount("ini", GRAFANA_INI_DIR, true),
        mount("provisioning", "/etc/grafana/provisioning", true),
        mount("dashboards", DASHBOARDS_DIR, true),
        mount("data", "/var/lib/grafana", false),
        mount("tmp", "/tmp", false),
    ]);
    c.readiness_probe = Some(http_probe("/api/health", 5));
    c.liveness_probe = Some(http_probe("/api/health", 30));
    c.resources = Some(resources_or(&s.pod, requirements("100m", "256Mi", "1Gi")));
    let empty = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let spec = PodSpec {
        containers: vec![c],
        volumes: Some(vec![
            cm("ini", vec![item("grafana.ini", "grafana.ini")]),
            cm(
                "provisioning",
                vec![
                    item("datasources.yaml", "datasources/datasources.yaml"),
                    item("dashboards.yaml", "dashboards/dashboards.yaml"),
                ],
            ),
            cm("dashboards", vec![item("tator.json", "tator.json")]),
            empty("data"),
            empty("tmp"),
        ]),
        security_context: Some(pod_security(GRAFANA_UID)),
        ..Default::default()
    };
    let hash = serde_json::to_vec(&conf.data).unwrap_or_default();
    let annotations = BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), short_hash(&hash, 16))]);
    simple_deployment(t, GRAFANA, spec, annotations, &s.pod, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn monitoring_on(operator: bool) -> ValidatedTator {
        let mut td = minimal("1.5.0");
        td.spec.monitoring.enabled = true;
        let mut t = validate(&td).unwrap();
        t.cluster.prometheus_operator = operator;
        t
    }

    fn names<K: kube::Resource>(objs: &[K]) -> Vec<String> {
        objs.iter()
            .map(|o| o.meta().name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn nothing_when_off() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let d = build(&t);
        assert!(d.deployments.is_empty() && d.services.is_empty() && d.service_monitors.is_empty());
        assert!(routes(&t).is_empty() && statsd_host(&t).is_none() && nginx_exporter(&t).is_none());
        assert!(generated_secret(&t).is_none());
    }

    #[test]
    fn own_prometheus_without_the_operator_crds() {
        let t = monitoring_on(false);
        let d = build(&t);
        assert_eq!(
            names(&d.deployments),
            ["tator-statsd-exporter", "tator-prometheus", "tator-grafana"]
        );
        assert_eq!(names(&d.claims), ["tator-prometheus"]);
        assert!(d.service_monitors.is_empty() && d.pod_monitors.is_empty());
        let paths: Vec<(String, Guard)> =
            routes(&t).into_iter().map(|r| (r.path, r.guard)).collect();
        assert_eq!(
            paths,
            [
                ("/grafana/".to_string(), Guard::Staff),
                ("/prometheus/".to_string(), Guard::Staff)
            ]
        );
        assert!(grafana_datasources(&t).contains("http://tator-prometheus:9090"));
    }

    #[test]
    fn monitors_with_the_operator_crds() {
        let mut t = monitoring_on(true);
        t.spec
            .monitoring
            .prometheus
            .monitor_labels
            .insert("release".into(), "kps".into());
        let d = build(&t);
        assert_eq!(
            names(&d.deployments),
            ["tator-statsd-exporter", "tator-grafana"]
        );
        assert!(d.claims.is_empty());
        assert_eq!(names(&d.service_monitors), ["tator-statsd-exporter"]);
        assert_eq!(names(&d.pod_monitors), ["tator-nginx"]);
        assert_eq!(
            d.service_monitors[0].metadata.labels.as_ref().unwrap()["release"],
            "kps"
        );
        assert_eq!(
            d.pod_monitors[0].data["spec"]["podMetricsEndpoints"][0]["port"],
            "metrics"
        );
        assert!(routes(&t).iter().all(|r| r.path != "/prometheus/"));
        assert!(grafana_datasources(&t).contains("prometheus-operated.monitoring.svc"));
    }

    #[test]
    fn grafana_has_no_anonymous_admin() {
        let t = monitoring_on(false);
        let ini = grafana_ini(&t);
        assert!(ini.contains("[auth.anonymous]\nenabled = false"), "{ini}");
        assert!(ini.contains("[auth.proxy]\nenabled = true"));
        assert!(ini.contains("auto_assign_org_role = Viewer"));
        assert!(!ini.contains("Admin"));
        let route = routes(&t)
            .into_iter()
            .find(|r| r.path == "/grafana/")
            .unwrap();
        assert_eq!(
            route.headers,
            [(
                GRAFANA_AUTH_HEADER.to_string(),
                GRAFANA_STAFF_USER.to_string()
            )]
        );
        // The generated admin password reaches the pod only by reference.
        let d = build(&t);
        let g = d
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some("tator-grafana"))
            .unwrap();
        let env = g
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap();
        let pw = env
            .iter()
            .find(|e| e.name == "GF_SECURITY_ADMIN_PASSWORD")
            .unwrap();
        assert!(pw.value.is_none() && pw.value_from.is_some());
    }

    #[test]
    fn no_mount_point_inside_a_read_only_volume() {
        // The runtime cannot create a mount point inside a read-only ConfigMap or Secret volume.
        let mut td = minimal("1.5.0");
        td.spec.monitoring.enabled = true;
        td.spec.logging.enabled = true;
        let t = validate(&td).unwrap();
        let mut d = build(&t);
        d.extend(super::super::logging::build(&t));
        let pods: Vec<PodSpec> = d
            .deployments
            .into_iter()
            .filter_map(|d| d.spec.and_then(|s| s.template.spec))
            .chain(
                d.daemon_sets
                    .into_iter()
                    .filter_map(|d| d.spec.and_then(|s| s.template.spec)),
            )
            .collect();
        assert!(pods.len() >= 5);
        for pod in pods {
            for c in &pod.containers {
                let mounts = c.volume_mounts.clone().unwrap_or_default();
                for outer in mounts.iter().filter(|m| m.read_only == Some(true)) {
                    for inner in &mounts {
                        assert!(
                            !inner
                                .mount_path
                                .starts_with(&format!("{}/", outer.mount_path)),
                            "{}: {} inside read-only {}",
                            c.name,
                            inner.mount_path,
                            outer.mount_path
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_monitoring_pod_meets_restricted() {
        let t = monitoring_on(false);
        for d in build(&t).deployments {
            let pod = d.spec.clone().unwrap().template.spec.unwrap();
            assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
            for c in pod.containers {
                let sc = c.security_context.unwrap();
                assert_eq!(sc.allow_privilege_escalation, Some(false));
                assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
            }
            assert!(pod.volumes.iter().flatten().all(|v| v.host_path.is_none()));
        }
    }
}
