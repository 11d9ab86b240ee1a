//! Logging: Filebeat (a DaemonSet shipping this namespace's container logs to Elasticsearch, with
//! an index lifecycle policy for retention), Kibana at `/logs`, and the Job that creates Kibana's
//! `filebeat-*` data view.
//!
//! Filebeat is the one workload that cannot meet PodSecurity `restricted`: it reads the nodes'
//! log files through hostPath volumes, as root. It is built only when the namespace's enforced
//! level allows it (see [`filebeat_allowed`]).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec},
        batch::v1::{Job, JobSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource,
            EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, KeyToPath,
            ObjectFieldSelector, PodSecurityContext, PodSpec, Probe, SeccompProfile,
            SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::json;

use super::{
    children::Children,
    common::*,
    features::{filebeat_wanted, kibana_wanted},
    tator_env::{self, Endpoints},
};
use crate::validate::ValidatedTator;

pub const FILEBEAT: &str = "filebeat";
pub const KIBANA: &str = "kibana";
/// Component label of the Job creating Kibana's data view.
pub const KIBANA_SETUP: &str = "kibana-setup";
pub const FILEBEAT_IMAGE: &str = "docker.elastic.co/beats/filebeat:8.15.5";
pub const KIBANA_IMAGE: &str = "docker.elastic.co/kibana/kibana:8.15.5";
pub const CURL_IMAGE: &str = "curlimages/curl:8.11.1";
pub const KIBANA_PORT: i32 = 5601;
/// Public path of Kibana (its `server.basePath`).
pub const LOGS_PATH: &str = "/logs";
/// Id and title of the data view the setup Job creates.
pub const DATA_VIEW_ID: &str = "filebeat";
pub const DATA_VIEW_TITLE: &str = "filebeat-*";
/// Name of the index lifecycle policy Filebeat installs (its own default name, so that the
/// index template Filebeat loads refers to it).
pub const ILM_POLICY: &str = "filebeat";
const KIBANA_UID: i64 = 1000;
const CURL_UID: i64 = 100;
const ES_CA_DIR: &str = "/etc/tator/elasticsearch-ca";
/// Host folders Filebeat reads: the kubelet's per-container symlinks and their targets.
pub const HOST_LOG_PATHS: &[&str] = &["/var/log/containers", "/var/log/pods"];
/// Host folder under which Filebeat keeps its registry (read offsets), one sub-folder per
/// installation.
pub const HOST_DATA_ROOT: &str = "/var/lib/tator-filebeat";
/// PodSecurity levels that forbid hostPath volumes.
const FORBIDDING_LEVELS: &[&str] = &["baseline", "restricted"];

/// `Err(why)` when the namespace's PodSecurity level forbids Filebeat's host paths. An unknown
/// level (no label, or a namespace the operator may not read) is let through: the DaemonSet then
/// shows whether its pods are admitted.
pub fn filebeat_allowed(t: &ValidatedTator) -> Result<(), String> {
    match t.cluster.pod_security.as_deref() {
        Some(level) if FORBIDDING_LEVELS.contains(&level) => Err(format!(
            "Filebeat reads the nodes' log files through hostPath volumes, which PodSecurity \
             {level:?} (enforced in namespace {}) forbids: label the namespace \
             pod-security.kubernetes.io/enforce=privileged, or set logging.filebeat.enabled: false",
            t.namespace
        )),
        _ => Ok(()),
    }
}

/// Everything of the logging stack.
pub fn build(t: &ValidatedTator) -> Children {
    let mut d = Children::default();
    if filebeat_wanted(t) && filebeat_allowed(t).is_ok() {
        let (sa, role, binding) = pod_reader(t, FILEBEAT);
        d.service_accounts.push(sa);
        d.roles.push(role);
        d.role_bindings.push(binding);
        let conf = filebeat_config_map(t);
        d.daemon_sets.push(filebeat_daemon_set(t, &conf));
        d.config_maps.push(conf);
    }
    if kibana_wanted(t) {
        d.services
            .push(cluster_service(t, KIBANA, "http", KIBANA_PORT));
        d.deployments.push(kibana_deployment(t));
        d.jobs.push(kibana_setup_job(t));
    }
    d
}

/// The NGINX route to Kibana (staff only). Kibana serves under `/logs` itself, so the prefix is
/// passed on unchanged.
pub fn routes(t: &ValidatedTator) -> Vec<ProxyRoute> {
    if !kibana_wanted(t) {
        return vec![];
    }
    vec![ProxyRoute {
        path: format!("{LOGS_PATH}/"),
        upstream: format!("{}:{KIBANA_PORT}", t.child_name(KIBANA)),
        guard: Guard::Staff,
        object_store: false,
        headers: vec![],
    }]
}

/// The lifecycle policy: roll the write index over daily, delete indices `retentionDays` after
/// their rollover.
pub fn ilm_policy(retention_days: i32) -> serde_json::Value {
    json!({
        "policy": {
            "phases": {
                "hot": {"actions": {"rollover": {"max_age": "1d", "max_primary_shard_size": "50gb"}}},
                "delete": {"min_age": format!("{retention_days}d"), "actions": {"delete": {}}}
            }
        }
    })
}

/// filebeat.yml: container logs of this namespace only, with pod metadata, to Elasticsearch.
pub fn filebeat_yml(t: &ValidatedTator, e: &Endpoints) -> String {
    let ns = &t.namespace;
    let mut output = vec![("hosts", json!(["${ELASTICSEARCH_URL}"]))];
    if e.es_credentials.is_some() {
        output.push(("username", json!("${ELASTICSEARCH_USERNAME}")));
        output.push(("password", json!("${ELASTICSEARCH_PASSWORD}")));
    }
    if es_ca(t).is_some() {
        output.push((
            "ssl.certificate_authorities",
            json!([format!("{ES_CA_DIR}/ca.crt")]),
        ));
    }
    let output: serde_json::Map<String, serde_json::Value> = output
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let conf = json!({
        "filebeat.inputs": [{
            "type": "filestream",
            "id": format!("tator-{ns}-{}", t.name),
            // The kubelet names the files <pod>_<namespace>_<container>-<id>.log.
            "paths": [format!("/var/log/containers/*_{ns}_*.log")],
            "prospector.scanner.symlinks": true,
            "parsers": [{"container": {"stream": "all", "format": "auto"}}],
            "processors": [{
                "add_kubernetes_metadata": {
                    "host": "${NODE_NAME}",
                    "namespace": ns,
                    "matchers": [{"logs_path": {"logs_path": "/var/log/containers/"}}],
                    "add_resource_metadata": {
                        "namespace": {"enabled": false},
                        "node": {"enabled": false}
                    }
                }
            }]
        }],
        "filebeat.registry.path": "/usr/share/filebeat/data/registry",
        "output.elasticsearch": output,
        "setup.ilm.enabled": true,
        "setup.ilm.policy_name": ILM_POLICY,
        "setup.ilm.policy_file": "/etc/filebeat/ilm-policy.json",
        "setup.ilm.overwrite": true,
        "logging.level": "warning",
        "logging.to_stderr": true,
        "http.enabled": false,
    });
    serde_yaml::to_string(&conf).unwrap_or_default()
}

/// The CA of a managed Elasticsearch, when one is configured.
fn es_ca(t: &ValidatedTator) -> Option<&tator_api::SecretKeyRef> {
    t.spec
        .elasticsearch
        .external
        .as_ref()
        .and_then(|e| e.ca_secret.as_ref())
}

fn es_ca_volume(t: &ValidatedTator) -> Option<(Volume, VolumeMount)> {
    let ca = es_ca(t)?;
    Some((
        Volume {
            name: "es-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "es-ca".into(),
            mount_path: ES_CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ))
}

/// `ELASTICSEARCH_URL` and, for a managed Elasticsearch with credentials, the user name and
/// password as `secretKeyRef`s.
fn es_env(e: &Endpoints) -> Vec<EnvVar> {
    let mut v = vec![env("ELASTICSEARCH_URL", e.es_url.clone())];
    if let Some((user, password)) = &e.es_credentials {
        v.push(env_secret("ELASTICSEARCH_USERNAME", user));
        v.push(env_secret("ELASTICSEARCH_PASSWORD", password));
    }
    v
}

/// The ConfigMap with filebeat.yml and the lifecycle policy.
pub fn filebeat_config_map(t: &ValidatedTator) -> ConfigMap {
    let e = tator_env::endpoints(t);
    ConfigMap {
        metadata: child_meta(t, t.child_name("filebeat-config"), FILEBEAT, None),
        data: Some(BTreeMap::from([
            ("filebeat.yml".to_string(), filebeat_yml(t, &e)),
            (
                "ilm-policy.json".to_string(),
                ilm_policy(t.spec.logging.retention_days).to_string(),
            ),
        ])),
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    }
}

/// The Filebeat DaemonSet. It runs as root (the nodes' log files belong to root) with every
/// capability dropped, no privilege escalation and a read-only root filesystem; the host paths
/// are the log folders (read-only) and its own registry folder.
pub fn filebeat_daemon_set(t: &ValidatedTator, conf: &ConfigMap) -> DaemonSet {
    let s = &t.spec.logging.filebeat;
    let e = tator_env::endpoints(t);
    let mut c = container(
        FILEBEAT,
        s.pod.image.clone().unwrap_or_else(|| FILEBEAT_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.args = Some(vec![
        "-c".into(),
        "/etc/filebeat/filebeat.yml".into(),
        "-e".into(),
    ]);
    c.security_context = Some(SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut envs = vec![EnvVar {
        name: "NODE_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    envs.extend(es_env(&e));
    c.env = Some(envs);
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: "/etc/filebeat".into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "data".into(),
            mount_path: "/usr/share/filebeat/data".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: t.child_name("filebeat-config"),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path(
            "data",
            &format!("{HOST_DATA_ROOT}/{}-{}", t.namespace, t.name),
            "DirectoryOrCreate",
        ),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    for (i, path) in HOST_LOG_PATHS.iter().enumerate() {
        let name = format!("host-logs-{i}");
        volumes.push(host_path(&name, path, "Directory"));
        mounts.push(VolumeMount {
            name,
            mount_path: (*path).into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some((v, m)) = es_ca_volume(t) {
        volumes.push(v);
        mounts.push(m);
    }
    c.volume_mounts = Some(mounts);
    c.resources = Some(resources_or(&s.pod, requirements("100m", "128Mi", "512Mi")));
    let mut spec = PodSpec {
        containers: vec![c],
        volumes: Some(volumes),
        service_account_name: Some(t.child_name(FILEBEAT)),
        security_context: Some(PodSecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_grace_period_seconds: Some(30),
        ..Default::default()
    };
    // Tator's pods may run on tainted nodes (GPU workers): follow them everywhere unless the
    // spec says otherwise.
    if s.pod.tolerations.is_empty() {
        spec.tolerations = Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
    }
    let conf_text = serde_json::to_vec(&conf.data).unwrap_or_default();
    let mut annotations = BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_string(),
        short_hash(&conf_text, 16),
    )]);
    annotations.extend(es_secrets_annotation(t));
    DaemonSet {
        metadata: child_meta(t, t.child_name(FILEBEAT), FILEBEAT, None),
        spec: Some(DaemonSetSpec {
            selector: label_selector(t, FILEBEAT),
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            template: pod_template(t, FILEBEAT, None, spec, annotations, &s.pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// The secrets-hash annotation of pods that read a managed Elasticsearch's credentials: a
/// rotated password rolls them.
fn es_secrets_annotation(t: &ValidatedTator) -> BTreeMap<String, String> {
    let external_credentials = t
        .spec
        .elasticsearch
        .external
        .as_ref()
        .is_some_and(|e| e.credentials_secret.is_some());
    t.secrets_hash
        .iter()
        .filter(|_| external_credentials)
        .map(|h| (SECRETS_HASH_ANNOTATION.to_string(), h.clone()))
        .collect()
}

/// The Kibana Deployment, serving under `/logs`.
pub fn kibana_deployment(t: &ValidatedTator) -> Deployment {
    let s = &t.spec.logging.kibana;
    let e = tator_env::endpoints(t);
    let mut c = container(
        KIBANA,
        s.pod.image.clone().unwrap_or_else(|| KIBANA_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    let mut envs = vec![
        env("ELASTICSEARCH_HOSTS", format!("[\"{}\"]", e.es_url)),
        env("SERVER_BASEPATH", LOGS_PATH),
        env("SERVER_REWRITEBASEPATH", "true"),
        env("SERVER_PUBLICBASEURL", public_url(t, LOGS_PATH)),
        env("TELEMETRY_OPTIN", "false"),
        env("TELEMETRY_ALLOWCHANGINGOPTINSTATUS", "false"),
    ];
    if let Some((user, password)) = &e.es_credentials {
        envs.push(env_secret("ELASTICSEARCH_USERNAME", user));
        envs.push(env_secret("ELASTICSEARCH_PASSWORD", password));
    }
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: "/usr/share/kibana/data".into(),
        ..Default::default()
    }];
    let mut volumes = vec![Volume {
        name: "data".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    if let Some((v, m)) = es_ca_volume(t) {
        envs.push(env(
            "ELASTICSEARCH_SSL_CERTIFICATEAUTHORITIES",
            format!("{ES_CA_DIR}/ca.crt"),
        ));
        volumes.push(v);
        mounts.push(m);
    }
    c.env = Some(envs);
    c.volume_mounts = Some(mounts);
    c.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: KIBANA_PORT,
        ..Default::default()
    }]);
    c.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(format!("{LOGS_PATH}/api/status")),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(10),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        ..Default::default()
    });
    c.resources = Some(resources_or(&s.pod, requirements("250m", "1Gi", "2Gi")));
    let spec = PodSpec {
        containers: vec![c],
        volumes: Some(volumes),
        security_context: Some(pod_security(KIBANA_UID)),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(t, t.child_name(KIBANA), KIBANA, None),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: label_selector(t, KIBANA),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            template: pod_template(t, KIBANA, None, spec, es_secrets_annotation(t), &s.pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// The script of the setup Job: wait for Kibana, then create (or overwrite) the data view and
/// make it the default.
pub const KIBANA_SETUP_SCRIPT: &str = r#"set -eu
auth=""
if [ -n "${ELASTICSEARCH_USERNAME:-}" ]; then auth="$ELASTICSEARCH_USERNAME:$ELASTICSEARCH_PASSWORD"; fi
k() { if [ -n "$auth" ]; then curl -fsS -u "$auth" "$@"; else curl -fsS "$@"; fi; }
until k -o /dev/null "$KIBANA_URL/api/status"; do echo "waiting for Kibana"; sleep 5; done
k -X POST "$KIBANA_URL/api/data_views/data_view" -H 'kbn-xsrf: true' -H 'Content-Type: application/json' -d "$DATA_VIEW"
echo
k -X POST "$KIBANA_URL/api/data_views/default" -H 'kbn-xsrf: true' -H 'Content-Type: application/json' -d "{\"data_view_id\": \"$DATA_VIEW_ID\", \"force\": true}"
echo
echo "data view $DATA_VIEW_ID is in place"
"#;

/// The data view the setup Job sends.
pub fn data_view() -> serde_json::Value {
    json!({
        "override": true,
        "data_view": {
            "id": DATA_VIEW_ID,
            "title": DATA_VIEW_TITLE,
            "name": "Tator logs (Filebeat)",
            "timeFieldName": "@timestamp"
        }
    })
}

/// The Job creating Kibana's `filebeat-*` data view. Its name carries a hash of its spec.
pub fn kibana_setup_job(t: &ValidatedTator) -> Job {
    let e = tator_env::endpoints(t);
    let mut c = container(
        KIBANA_SETUP,
        CURL_IMAGE.into(),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.command = Some(vec!["sh".into(), "-c".into(), KIBANA_SETUP_SCRIPT.into()]);
    let mut envs = vec![
        env(
            "KIBANA_URL",
            format!("http://{}:{KIBANA_PORT}{LOGS_PATH}", t.child_name(KIBANA)),
        ),
        env("DATA_VIEW", data_view().to_string()),
        env("DATA_VIEW_ID", DATA_VIEW_ID),
    ];
    if let Some((user, password)) = &e.es_credentials {
        envs.push(env_secret("ELASTICSEARCH_USERNAME", user));
        envs.push(env_secret("ELASTICSEARCH_PASSWORD", password));
    }
    c.env = Some(envs);
    c.resources = Some(requirements("20m", "32Mi", "64Mi"));
    let spec = PodSpec {
        containers: vec![c],
        security_context: Some(pod_security(CURL_UID)),
        restart_policy: Some("OnFailure".into()),
        ..Default::default()
    };
    let template = pod_template(
        t,
        KIBANA_SETUP,
        None,
        spec,
        BTreeMap::new(),
        &Default::default(),
    );
    let job_spec = JobSpec {
        backoff_limit: Some(10),
        active_deadline_seconds: Some(3600),
        template,
        ..Default::default()
    };
    let hash = serde_json::to_vec(&job_spec)
        .map(|b| short_hash(&b, 8))
        .unwrap_or_default();
    Job {
        metadata: child_meta(
            t,
            t.child_name(&format!("kibana-setup-{hash}")),
            KIBANA_SETUP,
            None,
        ),
        spec: Some(job_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn logging_on() -> ValidatedTator {
        let mut td = minimal("1.5.0");
        td.spec.logging.enabled = true;
        validate(&td).unwrap()
    }

    #[test]
    fn off_by_default_and_complete_when_on() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let d = build(&t);
        assert!(d.daemon_sets.is_empty() && d.deployments.is_empty() && d.jobs.is_empty());
        assert!(routes(&t).is_empty());
        let t = logging_on();
        let d = build(&t);
        assert_eq!(d.daemon_sets.len(), 1);
        assert_eq!(
            d.deployments[0].metadata.name.as_deref(),
            Some("tator-kibana")
        );
        assert_eq!(d.service_accounts.len(), 1);
        assert_eq!(d.roles.len(), 1);
        assert_eq!(d.role_bindings.len(), 1);
        assert!(
            d.jobs[0]
                .metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with("tator-kibana-setup-")
        );
        let r = routes(&t);
        assert_eq!(r[0].path, "/logs/");
        assert_eq!(r[0].guard, Guard::Staff);
    }

    #[test]
    fn restricted_namespace_gets_no_filebeat_but_kibana() {
        let mut t = logging_on();
        t.cluster.pod_security = Some("restricted".into());
        let why = filebeat_allowed(&t).unwrap_err();
        assert!(why.contains("privileged") && why.contains("tator"), "{why}");
        let d = build(&t);
        assert!(d.daemon_sets.is_empty() && d.roles.is_empty());
        assert_eq!(d.deployments.len(), 1);
        t.cluster.pod_security = Some("privileged".into());
        assert_eq!(build(&t).daemon_sets.len(), 1);
    }

    #[test]
    fn filebeat_reads_only_this_namespace_and_keeps_the_retention() {
        let mut td = minimal("1.5.0");
        td.spec.logging.enabled = true;
        td.spec.logging.retention_days = 3;
        let t = validate(&td).unwrap();
        let cm = filebeat_config_map(&t);
        let data = cm.data.unwrap();
        let yml: serde_json::Value = serde_yaml::from_str(&data["filebeat.yml"]).unwrap();
        assert_eq!(
            yml["filebeat.inputs"][0]["paths"][0],
            "/var/log/containers/*_tator_*.log"
        );
        assert_eq!(
            yml["filebeat.inputs"][0]["processors"][0]["add_kubernetes_metadata"]["namespace"],
            "tator"
        );
        assert_eq!(yml["setup.ilm.policy_name"], ILM_POLICY);
        let policy: serde_json::Value = serde_json::from_str(&data["ilm-policy.json"]).unwrap();
        assert_eq!(policy["policy"]["phases"]["delete"]["min_age"], "3d");
        // The in-cluster Elasticsearch needs no credentials: none are configured.
        assert!(yml["output.elasticsearch"].get("username").is_none());
    }

    #[test]
    fn every_logging_pod_but_filebeat_meets_restricted() {
        let t = logging_on();
        let d = build(&t);
        let kibana = d.deployments[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(
            kibana.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        assert!(
            kibana
                .volumes
                .iter()
                .flatten()
                .all(|v| v.host_path.is_none())
        );
        let job = d.jobs[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(
            job.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let fb = d.daemon_sets[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let paths: Vec<&str> = fb
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                "/var/lib/tator-filebeat/tator-tator",
                "/var/log/containers",
                "/var/log/pods"
            ]
        );
        let sc = fb.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, None);
    }
}
