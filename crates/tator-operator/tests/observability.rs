//! Logging and monitoring: the generated Prometheus configuration and dashboard queries checked by
//! the real `promtool` (built from Prometheus' Go module by tests/tools/build.sh), Grafana's and
//! Filebeat's provisioning parsed, and, on the real control plane, the objects of each switch
//! appearing and disappearing, Filebeat refused in a restricted namespace, and the own-Prometheus
//! path turning into ServiceMonitor/PodMonitor once prometheus-operator's CRDs (from
//! `../shared/crds/prometheus-operator`) are installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, process::Command, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        batch::v1::Job,
        core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::NamespaceResourceScope,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tator_api::TatorDeployment;
use tator_operator::{
    builders::{common::instance_selector, logging, monitoring},
    controller::{self, Context, Settings},
    validate::{ValidatedTator, validate},
};
use tator_testbed::{
    Binaries,
    support::{install_crds, namespace, shared_client, shared_dir, wait_for, workspace_root},
};

// ---------------------------------------------------------------------------------------------
// Configuration checked by the real parsers (no cluster)

fn validated(spec: Value, prometheus_operator: bool) -> ValidatedTator {
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator", "namespace": "tator-ns", "uid": "u"},
        "spec": spec,
    }))
    .unwrap();
    let mut t = validate(&td).unwrap();
    t.cluster.prometheus_operator = prometheus_operator;
    t
}

fn observability_on() -> ValidatedTator {
    validated(
        json!({"version": "1.5.0", "domain": "tator.example.com",
               "logging": {"enabled": true}, "monitoring": {"enabled": true}}),
        false,
    )
}

fn promtool() -> std::path::PathBuf {
    let bin = Binaries::locate()
        .expect("run tests/tools/build.sh (make tools) first")
        .bin("promtool");
    assert!(
        bin.is_file(),
        "{} is missing: run tests/tools/build.sh",
        bin.display()
    );
    bin
}

fn run_promtool(args: &[&str], file: &std::path::Path) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .arg(file)
        .output()
        .expect("promtool runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn prometheus_config_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let t = observability_on();
    let cm = monitoring::prometheus_config_map(&t);
    let yml = &cm.data.as_ref().unwrap()["prometheus.yml"];
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, yml).unwrap();
    let (ok, out) = run_promtool(&["check", "config", "--syntax-only"], &file);
    assert!(ok, "promtool check config failed:\n{out}\n{yml}");
    // Every target the dashboard needs is scraped, each with the labels its queries filter on.
    let v: Value = serde_yaml::from_str(yml).unwrap();
    let jobs: Vec<&str> = v["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["prometheus", "tator-statsd-exporter", "tator-nginx"]);
    assert_eq!(
        v["scrape_configs"][1]["static_configs"][0]["targets"][0],
        "tator-statsd-exporter:9102"
    );
    assert_eq!(
        v["scrape_configs"][2]["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
        "tator-ns"
    );
}

#[test]
fn promtool_really_checks() {
    // The harness must be able to fail: a config with a wrong field and a broken query.
    let dir = tempfile::tempdir().unwrap();
    let t = observability_on();
    let yml = monitoring::prometheus_yml(&t).replace("scrape_interval", "scrape_intervall");
    let file = dir.path().join("bad.yml");
    std::fs::write(&file, yml).unwrap();
    let (ok, out) = run_promtool(&["check", "config", "--syntax-only"], &file);
    assert!(!ok && out.contains("scrape_intervall"), "{out}");
    let rules = dir.path().join("bad-rules.yml");
    std::fs::write(
        &rules,
        "groups: [{name: g, rules: [{record: x, expr: 'sum(rate(up[5m])'}]}]\n",
    )
    .unwrap();
    assert!(!run_promtool(&["check", "rules"], &rules).0);
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses rule expressions with Prometheus' own PromQL parser: each dashboard query
    // becomes a recording rule.
    let dir = tempfile::tempdir().unwrap();
    for operator in [false, true] {
        let t = validated(
            json!({"version": "1.5.0", "domain": "tator.example.com", "monitoring": {"enabled": true}}),
            operator,
        );
        let rules: Vec<Value> = monitoring::dashboard_queries(&t)
            .into_iter()
            .enumerate()
            .map(|(i, expr)| json!({"record": format!("tator:panel_{i}"), "expr": expr}))
            .collect();
        let file = dir.path().join("rules.yml");
        std::fs::write(
            &file,
            serde_yaml::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]}))
                .unwrap(),
        )
        .unwrap();
        let (ok, out) = run_promtool(&["check", "rules"], &file);
        assert!(ok, "{out}");
        assert!(out.contains("6 rules found"), "{out}");
    }
}

/// A small INI reader: section → key → value (Grafana's format: `[section]`, `key = value`,
/// `#` or `;` comments).
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            assert!(
                out.insert(section.clone(), BTreeMap::new()).is_none(),
                "section {s} twice"
            );
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key = value: {line}", n + 1));
        assert!(!section.is_empty(), "key {k} outside a section");
        let prev = out
            .get_mut(&section)
            .unwrap()
            .insert(k.trim().to_string(), v.trim().to_string());
        assert!(prev.is_none(), "[{section}] {k} twice");
    }
    out
}

#[test]
fn grafana_provisioning_parses() {
    for operator in [false, true] {
        let t = validated(
            json!({"version": "1.5.0", "domain": "tator.example.com",
                   "monitoring": {"enabled": true, "grafana": {"staffRole": "Editor"}}}),
            operator,
        );
        let cm = monitoring::grafana_config_map(&t);
        let data = cm.data.unwrap();
        let ini = parse_ini(&data["grafana.ini"]);
        assert_eq!(ini["auth.anonymous"]["enabled"], "false");
        assert_eq!(ini["auth.basic"]["enabled"], "false");
        assert_eq!(ini["auth"]["disable_login_form"], "true");
        assert_eq!(ini["auth.proxy"]["enabled"], "true");
        assert_eq!(ini["auth.proxy"]["header_name"], "X-WEBAUTH-USER");
        assert_eq!(ini["users"]["auto_assign_org_role"], "Editor");
        assert_eq!(
            ini["server"]["root_url"],
            "http://tator.example.com/grafana/"
        );
        assert_eq!(ini["server"]["serve_from_sub_path"], "true");
        assert!(
            ini.values().flat_map(|s| s.values()).all(|v| v != "Admin"),
            "no Admin role anywhere"
        );

        let ds: Value = serde_yaml::from_str(&data["datasources.yaml"]).unwrap();
        assert_eq!(ds["apiVersion"], 1);
        let source = &ds["datasources"][0];
        assert_eq!(source["type"], "prometheus");
        let url = source["url"].as_str().unwrap();
        if operator {
            assert_eq!(url, "http://prometheus-operated.monitoring.svc:9090");
        } else {
            assert_eq!(url, "http://tator-prometheus:9090");
        }

        let providers: Value = serde_yaml::from_str(&data["dashboards.yaml"]).unwrap();
        assert_eq!(
            providers["providers"][0]["options"]["path"],
            monitoring::DASHBOARDS_DIR
        );

        let dash: Value = serde_json::from_str(&data["tator.json"]).unwrap();
        assert_eq!(dash["uid"], monitoring::DASHBOARD_UID);
        let panels = dash["panels"].as_array().unwrap();
        assert_eq!(panels.len(), 6);
        for p in panels {
            // Every panel reads the provisioned data source and filters on this installation.
            assert_eq!(p["datasource"]["uid"], source["uid"]);
            let expr = p["targets"][0]["expr"].as_str().unwrap();
            assert!(
                expr.contains("namespace=\"tator-ns\"")
                    && expr.contains("app_kubernetes_io_instance=\"tator\""),
                "{expr}"
            );
        }
        // The volume items mount exactly the keys the ConfigMap has.
        let d = monitoring::grafana_deployment(&t, &monitoring::grafana_config_map(&t));
        for v in d
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap()
            .volumes
            .unwrap()
        {
            for item in v.config_map.and_then(|c| c.items).unwrap_or_default() {
                assert!(data.contains_key(&item.key), "{}", item.key);
            }
        }
    }
}

#[test]
fn filebeat_config_parses_and_keeps_the_retention() {
    let t = validated(
        json!({"version": "1.5.0", "domain": "tator.example.com",
               "logging": {"enabled": true, "retentionDays": 14},
               "elasticsearch": {"external": {"url": "https://es.example.com:9200",
                   "credentialsSecret": {"name": "es"}, "caSecret": {"name": "es", "key": "ca.crt"}}}}),
        false,
    );
    let cm = logging::filebeat_config_map(&t);
    let data = cm.data.unwrap();
    let fb: Value = serde_yaml::from_str(&data["filebeat.yml"]).unwrap();
    let out = &fb["output.elasticsearch"];
    assert_eq!(out["hosts"][0], "${ELASTICSEARCH_URL}");
    // Credentials only as environment references, filled from secretKeyRefs.
    assert_eq!(out["password"], "${ELASTICSEARCH_PASSWORD}");
    assert!(
        out["ssl.certificate_authorities"][0]
            .as_str()
            .unwrap()
            .ends_with("ca.crt")
    );
    assert_eq!(fb["setup.ilm.enabled"], true);
    let policy: Value = serde_json::from_str(&data["ilm-policy.json"]).unwrap();
    assert_eq!(policy["policy"]["phases"]["delete"]["min_age"], "14d");
    let ds = logging::filebeat_daemon_set(&t, &logging::filebeat_config_map(&t));
    let c = &ds.spec.clone().unwrap().template.spec.unwrap().containers[0];
    let env = c.env.as_ref().unwrap();
    let url = env.iter().find(|e| e.name == "ELASTICSEARCH_URL").unwrap();
    assert_eq!(url.value.as_deref(), Some("https://es.example.com:9200"));
    let pw = env
        .iter()
        .find(|e| e.name == "ELASTICSEARCH_PASSWORD")
        .unwrap();
    assert!(pw.value.is_none() && pw.value_from.is_some());
}

// ---------------------------------------------------------------------------------------------
// On the real control plane

struct Env {
    client: Client,
    ns: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Env {
    /// A namespace (PodSecurity `restricted`, or `privileged` for Filebeat) with its own
    /// controller.
    async fn new(prefix: &str, restricted: bool) -> Self {
        let client = shared_client()
            .await
            .expect("the shared test cluster must start");
        install_crds(&client, &workspace_root().join("crds"))
            .await
            .unwrap();
        let ns = namespace(&client, prefix, restricted).await.unwrap();
        if !restricted {
            let patch = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}});
            Api::<Namespace>::all(client.clone())
                .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
        let settings = Settings {
            namespace: Some(ns.clone()),
            concurrency: 2,
            resync: Duration::from_secs(600),
            ..Settings::default()
        };
        let ctx = Arc::new(Context::new(client.clone(), settings));
        let task = tokio::spawn(controller::run(ctx));
        Self { client, ns, task }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn dynamic(&self, r: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, r)
    }

    async fn create(&self, spec: Value) {
        let td: TatorDeployment = serde_json::from_value(json!({
            "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
            "metadata": {"name": "tator", "namespace": self.ns},
            "spec": spec,
        }))
        .unwrap();
        self.api::<TatorDeployment>()
            .create(&PostParams::default(), &td)
            .await
            .unwrap();
    }

    async fn patch_spec(&self, patch: Value) {
        self.api::<TatorDeployment>()
            .patch(
                "tator",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": patch})),
            )
            .await
            .unwrap();
    }

    /// Waits for condition `type_` at the current generation to satisfy `ok`.
    async fn wait_condition(
        &self,
        type_: &str,
        timeout: Duration,
        ok: impl Fn(Option<&Condition>) -> bool,
    ) -> Option<Condition> {
        let tds = self.api::<TatorDeployment>();
        wait_for(&format!("condition {type_}"), timeout, || async {
            let td = tds.get("tator").await.map_err(|e| e.to_string())?;
            let st = td.status.clone().unwrap_or_default();
            if st.observed_generation != td.meta().generation {
                return Err(format!("observed {:?}", st.observed_generation));
            }
            let c = st.conditions.iter().find(|c| c.type_ == type_);
            if ok(c) {
                Ok(c.cloned())
            } else {
                Err(format!(
                    "{type_}: {:?}",
                    c.map(|c| (&c.status, &c.reason, &c.message))
                ))
            }
        })
        .await
        .unwrap()
    }

    /// Names of the children of kind K (instance labels).
    async fn names<K>(&self) -> Vec<String>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let mut v: Vec<String> = self
            .api::<K>()
            .list_metadata(&ListParams::default().labels(&instance_selector("tator")))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .map(|o| o.name_any())
            .collect();
        v.sort();
        v
    }

    async fn dynamic_names(&self, r: &ApiResource) -> Vec<String> {
        match self
            .dynamic(r)
            .list_metadata(&ListParams::default().labels(&instance_selector("tator")))
            .await
        {
            Ok(l) => l.items.into_iter().map(|o| o.name_any()).collect(),
            Err(kube::Error::Api(s)) if s.code == 404 => vec![],
            Err(e) => panic!("{e}"),
        }
    }

    async fn nginx_conf(&self) -> String {
        let cm: ConfigMap = self
            .api::<ConfigMap>()
            .get("tator-nginx-conf")
            .await
            .unwrap();
        cm.data.unwrap()["nginx.conf"].clone()
    }

    /// Waits until `check` holds on freshly read state.
    async fn eventually<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        wait_for(what, Duration::from_secs(60), check)
            .await
            .unwrap();
    }
}

/// The REST API's identity and the workflow roles, which every installation has.
fn workflow_identity(name: &str) -> bool {
    matches!(
        name,
        "tator-api" | "tator-workflow" | "tator-workflow-submit"
    )
}

fn has(names: &[String], name: &str) -> bool {
    names.iter().any(|n| n == name)
}

fn ready(c: Option<&Condition>) -> bool {
    c.is_some_and(|c| c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_appears_and_disappears_with_its_switches() {
    let env = Env::new("obs-logging", false).await;
    env.create(json!({"version": "1.5.0", "domain": "tator.example.com",
                      "logging": {"enabled": true, "retentionDays": 3}}))
        .await;
    let c = env
        .wait_condition("LoggingReady", Duration::from_secs(120), ready)
        .await
        .unwrap();
    assert_eq!(c.reason, "Available");
    assert!(
        c.message.contains("data view filebeat-* created"),
        "{}",
        c.message
    );
    assert!(has(&env.names::<DaemonSet>().await, "tator-filebeat"));
    assert!(has(&env.names::<ServiceAccount>().await, "tator-filebeat"));
    assert!(has(&env.names::<Role>().await, "tator-filebeat"));
    assert!(has(&env.names::<RoleBinding>().await, "tator-filebeat"));
    assert!(has(&env.names::<Deployment>().await, "tator-kibana"));
    assert!(has(&env.names::<Service>().await, "tator-kibana"));
    let cms = env.names::<ConfigMap>().await;
    assert!(has(&cms, "tator-filebeat-config"));
    let jobs = env.names::<Job>().await;
    assert!(
        jobs.iter().any(|j| j.starts_with("tator-kibana-setup-")),
        "{jobs:?}"
    );
    let cm: ConfigMap = env
        .api::<ConfigMap>()
        .get("tator-filebeat-config")
        .await
        .unwrap();
    assert!(cm.data.unwrap()["ilm-policy.json"].contains("\"3d\""));
    let conf = env.nginx_conf().await;
    let logs = conf
        .split("location ^~ /logs/ {")
        .nth(1)
        .expect("a /logs/ route");
    assert!(
        logs.split('}')
            .next()
            .unwrap()
            .contains("auth_request /auth-admin;")
    );
    // The Filebeat pods were admitted: one per node (kwok's three, the GPU node tolerated).
    let ds: DaemonSet = env.api::<DaemonSet>().get("tator-filebeat").await.unwrap();
    assert_eq!(ds.status.unwrap().desired_number_scheduled, 3);

    // Filebeat off: its DaemonSet, RBAC and configuration go; Kibana stays.
    env.patch_spec(json!({"logging": {"filebeat": {"enabled": false}}}))
        .await;
    env.eventually("Filebeat's objects pruned", || async {
        let left: Vec<String> = [
            env.names::<DaemonSet>().await,
            env.names::<ServiceAccount>().await,
            env.names::<Role>().await,
            env.names::<RoleBinding>().await,
        ]
        .concat()
        .into_iter()
        .filter(|n| !workflow_identity(n))
        .collect();
        let cms = env.names::<ConfigMap>().await;
        if left.is_empty() && !has(&cms, "tator-filebeat-config") {
            Ok(())
        } else {
            Err(format!("{left:?} {cms:?}"))
        }
    })
    .await;
    assert!(has(&env.names::<Deployment>().await, "tator-kibana"));
    env.wait_condition("LoggingReady", Duration::from_secs(60), ready)
        .await;

    // Logging off: Kibana, its Job and route go, and so does the condition.
    env.patch_spec(json!({"logging": {"enabled": false}})).await;
    env.wait_condition("LoggingReady", Duration::from_secs(60), |c| c.is_none())
        .await;
    env.eventually("Kibana pruned", || async {
        let d = env.names::<Deployment>().await;
        let s = env.names::<Service>().await;
        let j = env.names::<Job>().await;
        if !has(&d, "tator-kibana")
            && !has(&s, "tator-kibana")
            && !j.iter().any(|j| j.starts_with("tator-kibana-setup-"))
        {
            Ok(())
        } else {
            Err(format!("{d:?} {s:?} {j:?}"))
        }
    })
    .await;
    assert!(!env.nginx_conf().await.contains("/logs/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filebeat_is_refused_in_a_restricted_namespace() {
    let env = Env::new("obs-restricted", true).await;
    env.create(json!({"version": "1.5.0", "domain": "tator.example.com",
                      "logging": {"enabled": true}}))
        .await;
    let c = env
        .wait_condition("LoggingReady", Duration::from_secs(60), |c| {
            c.is_some_and(|c| c.reason == "FilebeatForbidden")
        })
        .await
        .unwrap();
    assert_eq!(c.status, "False");
    assert!(
        c.message
            .contains("pod-security.kubernetes.io/enforce=privileged"),
        "{}",
        c.message
    );
    // Ready says why, and nothing that could not be admitted was created; Kibana was.
    let ready_cond = env
        .wait_condition("Ready", Duration::from_secs(60), |c| {
            c.is_some_and(|c| c.message.contains("LoggingReady: FilebeatForbidden"))
        })
        .await
        .unwrap();
    assert_eq!(ready_cond.status, "False");
    assert!(env.names::<DaemonSet>().await.is_empty());
    env.eventually("Kibana created", || async {
        if has(&env.names::<Deployment>().await, "tator-kibana") {
            Ok(())
        } else {
            Err("no Kibana yet".into())
        }
    })
    .await;
    // Switching Filebeat off clears the refusal.
    env.patch_spec(json!({"logging": {"filebeat": {"enabled": false}}}))
        .await;
    env.wait_condition("LoggingReady", Duration::from_secs(120), ready)
        .await;
}

fn containers(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_takes_the_own_prometheus_path_then_the_service_monitor_path() {
    // Restricted: every monitoring pod must be admitted there.
    let env = Env::new("obs-monitoring", true).await;
    let sm = monitoring::service_monitor_resource();
    let pm = monitoring::pod_monitor_resource();
    let crds = shared_dir().join("crds/prometheus-operator");
    // This test is the only one of this binary that looks at prometheus-operator: its CRDs are
    // installed on the shared cluster below, once the own-Prometheus path has been checked.
    env.create(json!({"version": "1.5.0", "domain": "tator.example.com",
                      "monitoring": {"enabled": true, "prometheus": {"storage": {"size": "2Gi"}}}}))
        .await;
    let c = env
        .wait_condition("MonitoringReady", Duration::from_secs(120), ready)
        .await
        .unwrap();
    assert!(
        c.message.contains("the operator's own Prometheus"),
        "{}",
        c.message
    );
    let deployments = env.names::<Deployment>().await;
    for d in ["tator-statsd-exporter", "tator-prometheus", "tator-grafana"] {
        assert!(has(&deployments, d), "{d} in {deployments:?}");
    }
    let claims = env.names::<PersistentVolumeClaim>().await;
    assert!(has(&claims, "tator-prometheus"), "{claims:?}");
    assert!(has(&env.names::<Role>().await, "tator-prometheus"));
    assert!(has(&env.names::<Secret>().await, "tator-grafana"));
    let cm: ConfigMap = env
        .api::<ConfigMap>()
        .get("tator-prometheus-config")
        .await
        .unwrap();
    assert!(cm.data.unwrap()["prometheus.yml"].contains("tator-statsd-exporter:9102"));
    let conf = env.nginx_conf().await;
    for path in ["/grafana/", "/prometheus/"] {
        let body = conf
            .split(&format!("location ^~ {path} {{"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {path} route"));
        assert!(
            body.split('}')
                .next()
                .unwrap()
                .contains("auth_request /auth-admin;")
        );
    }
    let nginx: Deployment = env.api::<Deployment>().get("tator-nginx").await.unwrap();
    assert_eq!(containers(&nginx), ["nginx", "nginx-exporter"]);
    // The API runs once migrated; then gunicorn reports to the statsd exporter.
    env.eventually("gunicorn's --statsd-host", || async {
        let api: Deployment = env
            .api::<Deployment>()
            .get("tator-api")
            .await
            .map_err(|e| e.to_string())?;
        let args = api.spec.clone().unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        if args.contains(&"--statsd-host=tator-statsd-exporter:9125".to_string()) {
            Ok(())
        } else {
            Err(format!("{args:?}"))
        }
    })
    .await;
    assert!(env.dynamic_names(&sm).await.is_empty());

    // prometheus-operator appears: the next reconcile (any change) takes the ServiceMonitor path.
    install_crds(&env.client, &crds).await.unwrap();
    env.patch_spec(json!({"monitoring": {"prometheus": {"monitorLabels": {"release": "kps"}}}}))
        .await;
    env.eventually("ServiceMonitor and PodMonitor created", || async {
        let s = env.dynamic_names(&sm).await;
        let p = env.dynamic_names(&pm).await;
        if s == ["tator-statsd-exporter"] && p == ["tator-nginx"] {
            Ok(())
        } else {
            Err(format!("{s:?} {p:?}"))
        }
    })
    .await;
    let c = env
        .wait_condition("MonitoringReady", Duration::from_secs(60), |c| {
            c.is_some_and(|c| c.status == "True" && c.message.contains("ServiceMonitor"))
        })
        .await
        .unwrap();
    assert!(c.message.contains("PodMonitor"), "{}", c.message);
    let monitor = env.dynamic(&sm).get("tator-statsd-exporter").await.unwrap();
    assert_eq!(monitor.labels()["release"], "kps");
    env.eventually("own Prometheus pruned", || async {
        let d = env.names::<Deployment>().await;
        let c = env.names::<PersistentVolumeClaim>().await;
        let r: Vec<String> = env
            .names::<Role>()
            .await
            .into_iter()
            .filter(|n| !workflow_identity(n))
            .collect();
        let cms = env.names::<ConfigMap>().await;
        if !has(&d, "tator-prometheus")
            && !has(&c, "tator-prometheus")
            && r.is_empty()
            && !has(&cms, "tator-prometheus-config")
        {
            Ok(())
        } else {
            Err(format!("{d:?} {c:?} {r:?} {cms:?}"))
        }
    })
    .await;
    assert!(!env.nginx_conf().await.contains("/prometheus/"));
    assert!(has(&env.names::<Deployment>().await, "tator-grafana"));

    // Grafana off, then monitoring off: everything goes, the NGINX sidecar and statsd flag too.
    env.patch_spec(json!({"monitoring": {"grafana": {"enabled": false}}}))
        .await;
    env.eventually("Grafana pruned", || async {
        let d = env.names::<Deployment>().await;
        if has(&d, "tator-grafana") {
            Err(format!("{d:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    assert!(!env.nginx_conf().await.contains("/grafana/"));
    env.patch_spec(json!({"monitoring": {"enabled": false}}))
        .await;
    env.wait_condition("MonitoringReady", Duration::from_secs(60), |c| c.is_none())
        .await;
    env.eventually("monitoring pruned", || async {
        let d = env.names::<Deployment>().await;
        let s = env.dynamic_names(&sm).await;
        let p = env.dynamic_names(&pm).await;
        let nginx: Deployment = env
            .api::<Deployment>()
            .get("tator-nginx")
            .await
            .map_err(|e| e.to_string())?;
        if !has(&d, "tator-statsd-exporter")
            && s.is_empty()
            && p.is_empty()
            && containers(&nginx) == ["nginx"]
        {
            Ok(())
        } else {
            Err(format!("{d:?} {s:?} {p:?} {:?}", containers(&nginx)))
        }
    })
    .await;
    let api: Deployment = env.api::<Deployment>().get("tator-api").await.unwrap();
    let args = api.spec.clone().unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        !args.iter().any(|a| a.starts_with("--statsd-host")),
        "{args:?}"
    );
}
