//! Generic pieces every builder shares, importing no other builder: labels, metadata and owner
//! references, pod security and pod templates, the `podOverrides` merge, environment variables,
//! probes, Services, PodDisruptionBudgets, pod-reader RBAC, generated Secrets and the route types
//! NGINX proxies.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{
            DeploymentStrategy, RollingUpdateDeployment,
            StatefulSetPersistentVolumeClaimRetentionPolicy,
        },
        core::v1::{
            Capabilities, Container, EnvVar, EnvVarSource, ExecAction, LocalObjectReference,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Service,
            ServiceAccount, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume,
            VolumeMount, VolumeResourceRequirements,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tator_api::{DeletionPolicy, PodSettings, VolumeSettings, labels};

use crate::validate::ValidatedTator;

/// Annotation on pod templates carrying a hash of the configuration they read, so that a
/// configuration change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "tator.io/config-hash";
/// Annotation on pod templates carrying a hash of the Secrets they read.
pub const SECRETS_HASH_ANNOTATION: &str = "tator.io/secrets-hash";

/// User and group Tator containers run as (PodSecurity `restricted` needs a non-root user).
pub const TATOR_UID: i64 = 1000;

/// The labels selecting one component's pods.
pub fn selector_labels(t: &ValidatedTator, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), labels::APP.to_string()),
        (labels::INSTANCE.to_string(), t.name.clone()),
        (labels::COMPONENT.to_string(), component.to_string()),
    ])
}

/// Every recommended label of a child object.
pub fn child_labels(
    t: &ValidatedTator,
    component: &str,
    version: Option<&str>,
) -> BTreeMap<String, String> {
    let mut l = selector_labels(t, component);
    l.insert(labels::PART_OF.into(), labels::APP.into());
    l.insert(labels::MANAGED_BY.into(), labels::MANAGER.into());
    if let Some(v) = version {
        l.insert(labels::VERSION.into(), v.to_string());
    }
    l
}

/// Label selector matching every child of one TatorDeployment (used to prune orphans).
pub fn instance_selector(name: &str) -> String {
    format!(
        "{}={},{}={}",
        labels::INSTANCE,
        name,
        labels::MANAGED_BY,
        labels::MANAGER
    )
}

/// Metadata of a child: name, namespace, labels and the controller owner reference.
pub fn child_meta(
    t: &ValidatedTator,
    name: String,
    component: &str,
    version: Option<&str>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(t.namespace.clone()),
        labels: Some(child_labels(t, component, version)),
        owner_references: Some(vec![t.owner.clone()]),
        ..Default::default()
    }
}

/// Metadata of a child that outlives its TatorDeployment (data: volumes, generated secrets).
pub fn retained_meta(t: &ValidatedTator, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(t.namespace.clone()),
        labels: Some(child_labels(t, component, None)),
        ..Default::default()
    }
}

pub fn label_selector(t: &ValidatedTator, component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(t, component)),
        ..Default::default()
    }
}

/// Hex SHA-256 of some bytes, shortened to `len` characters.
pub fn short_hash(bytes: &[u8], len: usize) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..len.min(hex.len())].to_string()
}

/// Pod security context meeting PodSecurity `restricted`.
pub fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container security context meeting PodSecurity `restricted`.
pub fn container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Spread a component's pods over nodes (best effort).
pub fn spread(t: &ValidatedTator, component: &str) -> Vec<TopologySpreadConstraint> {
    vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(label_selector(t, component)),
        ..Default::default()
    }]
}

/// Image pull secrets from the spec.
pub fn pull_secrets(t: &ValidatedTator) -> Option<Vec<LocalObjectReference>> {
    let s = &t.spec.image.pull_secrets;
    (!s.is_empty()).then(|| {
        s.iter()
            .map(|n| LocalObjectReference { name: n.clone() })
            .collect()
    })
}

/// `<registry>/<image>:<tag of version>` (Tator tags images with the release's git commit, see
/// [`crate::catalog`]), or the component's override.
pub fn tator_image(t: &ValidatedTator, image: &str, version: &str, pod: &PodSettings) -> String {
    pod.image.clone().unwrap_or_else(|| {
        format!(
            "{}/{}:{}",
            t.spec.image.registry,
            image,
            t.image_tag(version)
        )
    })
}

/// Name of the shared ReadWriteMany claim.
pub fn shared_claim_name(t: &ValidatedTator) -> String {
    t.spec
        .storage
        .shared
        .existing_claim
        .clone()
        .unwrap_or_else(|| t.child_name("shared"))
}

/// The shared volume, as a pod volume.
pub fn shared_volume(t: &ValidatedTator) -> Volume {
    Volume {
        name: "shared".into(),
        persistent_volume_claim: Some(
            k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                claim_name: shared_claim_name(t),
                read_only: None,
            },
        ),
        ..Default::default()
    }
}

/// Mounts of the shared volume's sub-folders (`static`, `media`, `backup`, `migrations`).
pub fn shared_mounts(subpaths: &[(&str, &str)], read_only: bool) -> Vec<VolumeMount> {
    subpaths
        .iter()
        .map(|(sub, path)| VolumeMount {
            name: "shared".into(),
            mount_path: (*path).into(),
            sub_path: Some((*sub).into()),
            read_only: read_only.then_some(true),
            ..Default::default()
        })
        .collect()
}

/// A plain environment variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// An environment variable read from a Secret key.
pub fn env_secret(name: &str, sel: &SecretKeySelector) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(sel.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pod-level placement settings from the component's spec.
pub fn apply_placement(spec: &mut PodSpec, pod: &PodSettings) {
    if !pod.node_selector.is_empty() {
        spec.node_selector = Some(pod.node_selector.clone());
    }
    if !pod.tolerations.is_empty() {
        spec.tolerations = Some(pod.tolerations.clone());
    }
    if pod.affinity.is_some() {
        spec.affinity = pod.affinity.clone();
    }
}

/// Resources of the main container: the spec's, or the component's default.
pub fn resources_or(
    pod: &PodSettings,
    default: k8s_openapi::api::core::v1::ResourceRequirements,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    pod.resources.clone().unwrap_or(default)
}

pub fn requirements(
    cpu_req: &str,
    mem_req: &str,
    mem_limit: &str,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu_req.into())),
            ("memory".to_string(), Quantity(mem_req.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(mem_limit.into()),
        )])),
        ..Default::default()
    }
}

/// Assembles a pod template: placement, pull secrets, then the component's `podOverrides`.
pub fn pod_template(
    t: &ValidatedTator,
    component: &str,
    version: Option<&str>,
    mut spec: PodSpec,
    annotations: BTreeMap<String, String>,
    pod: &PodSettings,
) -> PodTemplateSpec {
    apply_placement(&mut spec, pod);
    if spec.image_pull_secrets.is_none() {
        spec.image_pull_secrets = pull_secrets(t);
    }
    let mut labels = selector_labels(t, component);
    if let Some(v) = version {
        labels.insert(tator_api::labels::VERSION.into(), v.into());
    }
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        }),
        spec: Some(spec),
    };
    with_overrides(template, pod.pod_overrides.as_ref())
}

/// Deep-merges `overrides` over a generated pod template. Validation has already checked that the
/// overrides parse as a PodTemplateSpec; if the merged result does not, the generated template is
/// kept unchanged.
pub fn with_overrides(template: PodTemplateSpec, overrides: Option<&Value>) -> PodTemplateSpec {
    let Some(overrides) = overrides else {
        return template;
    };
    let Ok(mut base) = serde_json::to_value(&template) else {
        return template;
    };
    merge(&mut base, overrides);
    serde_json::from_value(base).unwrap_or(template)
}

/// Merges `overlay` into `base`: maps key by key (`null` removes a key), lists whose items all
/// carry a `name` item by item by name, any other value replaces.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    merge(existing, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if named(b) && named(o) => {
            for item in o {
                let name = item.get("name");
                match b.iter_mut().find(|x| x.get("name") == name) {
                    Some(existing) => merge(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn named(items: &[Value]) -> bool {
    items
        .iter()
        .all(|i| i.get("name").is_some_and(Value::is_string))
}

/// A container with the fields every generated container sets.
pub fn container(name: &str, image: String, pull_policy: &str, read_only_root: bool) -> Container {
    Container {
        name: name.into(),
        image: Some(image),
        image_pull_policy: Some(pull_policy.into()),
        security_context: Some(container_security(read_only_root)),
        ..Default::default()
    }
}

/// Rolling update that never takes a serving pod away before its replacement is ready.
pub fn zero_downtime() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

pub(crate) fn exec_probe(cmd: &str, initial: i32, period: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["sh".into(), "-c".into(), cmd.into()]),
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(6),
        ..Default::default()
    }
}

/// A ClusterIP Service for one component on one port.
pub fn cluster_service(t: &ValidatedTator, component: &str, port_name: &str, port: i32) -> Service {
    Service {
        metadata: child_meta(t, t.child_name(component), component, None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(t, component)),
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port,
                target_port: Some(IntOrString::String(port_name.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// A PodDisruptionBudget allowing one voluntary disruption at a time.
pub fn pdb(t: &ValidatedTator, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(t, t.child_name(component), component, None),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(label_selector(t, component)),
            ..Default::default()
        }),
        status: None,
    }
}

/// Metadata of data that the deletion policy governs: owned (deleted with the TatorDeployment)
/// only with `deletionPolicy: Delete`.
pub fn data_meta(t: &ValidatedTator, name: String, component: &str) -> ObjectMeta {
    match t.spec.deletion_policy {
        DeletionPolicy::Delete => child_meta(t, name, component, None),
        DeletionPolicy::Retain => retained_meta(t, name, component),
    }
}

pub(crate) fn claim_template(name: &str, v: &VolumeSettings) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
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

pub(crate) fn retention(t: &ValidatedTator) -> StatefulSetPersistentVolumeClaimRetentionPolicy {
    let policy = match t.spec.deletion_policy {
        DeletionPolicy::Delete => "Delete",
        DeletionPolicy::Retain => "Retain",
    };
    StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some(policy.into()),
        when_scaled: Some("Retain".into()),
    }
}

/// A Secret the operator generates once: `(key, value length)` pairs of random values, plus
/// fixed values. Never rewritten once it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedSecret {
    pub name: String,
    pub component: &'static str,
    pub fixed: BTreeMap<String, String>,
    pub random: Vec<(String, usize)>,
}

/// A ServiceAccount with a Role that reads the pods of this namespace (Filebeat's metadata,
/// Prometheus' pod discovery), and its binding. All three are owned by the TatorDeployment.
pub fn pod_reader(t: &ValidatedTator, component: &str) -> (ServiceAccount, Role, RoleBinding) {
    let name = t.child_name(component);
    let sa = ServiceAccount {
        metadata: child_meta(t, name.clone(), component, None),
        automount_service_account_token: Some(true),
        ..Default::default()
    };
    let role = Role {
        metadata: child_meta(t, name.clone(), component, None),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: child_meta(t, name.clone(), component, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(t.namespace.clone()),
            ..Default::default()
        }]),
    };
    (sa, role, binding)
}

/// The public URL of a path under the domain.
pub fn public_url(t: &ValidatedTator, path: &str) -> String {
    let scheme = if t.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}{path}", t.spec.domain)
}

/// Who may use a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Anyone (the backend does its own authentication).
    Open,
    /// Members of the project in the path (`auth_request /auth-project`).
    Project,
    /// Django staff only (`auth_request /auth-admin`).
    Staff,
}

/// An extra proxied route (admin UIs and object stores add these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRoute {
    pub path: String,
    pub upstream: String,
    pub guard: Guard,
    /// An S3 store: the Host header stays the upstream's (presigned URLs are signed for it) and
    /// bodies stream through unbuffered.
    pub object_store: bool,
    /// Request headers NGINX sets (replacing any the client sent), for example Grafana's
    /// auth-proxy user after the staff check.
    pub headers: Vec<(String, String)>,
}

/// A required key of a Secret.
pub fn key_ref(name: &str, key: &str) -> SecretKeySelector {
    SecretKeySelector {
        name: name.into(),
        key: key.into(),
        optional: Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_by_name_and_replace_other_lists() {
        let mut base = json!({
            "metadata": {"labels": {"a": "1"}},
            "spec": {"containers": [{"name": "api", "image": "x", "args": ["a", "b"]}],
                     "tolerations": [{"key": "k"}]}
        });
        merge(
            &mut base,
            &json!({
                "metadata": {"labels": {"b": "2"}},
                "spec": {"containers": [{"name": "api", "args": ["c"]}, {"name": "sidecar", "image": "s"}],
                         "tolerations": [{"key": "z"}], "hostname": null}
            }),
        );
        assert_eq!(base["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(base["spec"]["containers"][0]["image"], "x");
        assert_eq!(base["spec"]["containers"][0]["args"], json!(["c"]));
        assert_eq!(base["spec"]["containers"][1]["name"], "sidecar");
        assert_eq!(base["spec"]["tolerations"], json!([{"key": "z"}]));
    }

    #[test]
    fn null_removes_a_key() {
        let mut base = json!({"a": 1, "b": 2});
        merge(&mut base, &json!({"a": null}));
        assert_eq!(base, json!({"b": 2}));
    }
}
