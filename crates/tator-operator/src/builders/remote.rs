//! What the operator creates in a job cluster: a namespace, the workflow identity and roles,
//! Tator's submit identity with a token, and (for transcode clusters) the WorkflowTemplates.
//! Pure: the job-cluster workers apply it with a client of their own.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::api::{DynamicObject, ObjectMeta};
use tator_api::{JobCluster, JobKind};

use super::{
    buckets,
    names::OWNER_UID_LABEL,
    workflows::{self, Target},
};
use crate::validate::ValidatedTator;

/// Component label of Tator's submit identity in a job cluster.
pub const SUBMIT: &str = "submit";
/// Key of the token in the Secret the token controller fills.
pub const TOKEN_KEY: &str = "token";
pub const CA_KEY: &str = "ca.crt";

/// Everything desired in one job cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteObjects {
    pub namespace: Namespace,
    pub service_accounts: Vec<ServiceAccount>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    /// The `kubernetes.io/service-account-token` Secret of Tator's submit identity.
    pub token_secret: Secret,
    /// Secrets copied from this namespace (image pull Secrets, bucket credentials), by name.
    pub copied_secrets: Vec<String>,
    /// The WorkflowTemplates (transcode clusters), or why they could not be built.
    pub templates: Result<Vec<DynamicObject>, String>,
}

/// The name of the submit token Secret.
pub fn token_secret_name(t: &ValidatedTator) -> String {
    t.child_name("submit-token")
}

/// Builds the job cluster's objects.
pub fn objects(t: &ValidatedTator, cluster: &JobCluster, version: &str) -> RemoteObjects {
    let target = Target::remote(t, &cluster.namespace);
    let mut ns_labels = target.labels.clone();
    // Workflow pods meet PodSecurity restricted; the namespace enforces it.
    ns_labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "restricted".into(),
    );
    ns_labels.insert(
        tator_api::labels::MANAGED_BY.into(),
        tator_api::labels::MANAGER.into(),
    );
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(cluster.namespace.clone()),
            labels: Some(ns_labels),
            ..Default::default()
        },
        ..Default::default()
    };
    let (wsa, wrole, wbinding) = workflows::executor_rbac(t, &target);
    let submit_sa = ServiceAccount {
        metadata: target.meta(t, t.child_name(SUBMIT), SUBMIT),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let (srole, sbinding) =
        workflows::submit_rbac(t, &target, &t.child_name(SUBMIT), &cluster.namespace);
    let mut token_meta = target.meta(t, token_secret_name(t), SUBMIT);
    token_meta.annotations = Some(BTreeMap::from([(
        "kubernetes.io/service-account.name".to_string(),
        t.child_name(SUBMIT),
    )]));
    let token_secret = Secret {
        metadata: token_meta,
        type_: Some("kubernetes.io/service-account-token".into()),
        ..Default::default()
    };
    let mut copied_secrets = t.spec.image.pull_secrets.clone();
    copied_secrets.push(buckets::buckets_secret_name(t));
    let templates = if cluster.runs.contains(&JobKind::Transcode) {
        workflows::templates(t, version, &target)
    } else {
        Ok(Vec::new())
    };
    RemoteObjects {
        namespace,
        service_accounts: vec![wsa, submit_sa],
        roles: vec![wrole, srole],
        role_bindings: vec![wbinding, sbinding],
        token_secret,
        copied_secrets,
        templates,
    }
}

/// A copy of a Secret of this namespace for the job cluster (same name, type and data).
pub fn copied_secret(t: &ValidatedTator, cluster: &JobCluster, source: &Secret) -> Secret {
    let target = Target::remote(t, &cluster.namespace);
    let name = source.metadata.name.clone().unwrap_or_default();
    Secret {
        metadata: target.meta(t, name, "copied-secret"),
        type_: source.type_.clone(),
        data: source.data.clone(),
        ..Default::default()
    }
}

/// Label selector of every object one TatorDeployment made in a job cluster.
pub fn owner_selector(uid: &str) -> String {
    format!("{OWNER_UID_LABEL}={uid}")
}

/// Host and port of an https URL (`https://host:port/...`).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    if let Some(stripped) = authority.strip_prefix('[') {
        // [ipv6]:port
        let (h, p) = stripped.split_once(']')?;
        let port = p.strip_prefix(':').map_or(Some(443), |p| p.parse().ok())?;
        return Some((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), 443)),
    }
}

/// Name of the Secret earlier operator versions wrote with REMOTE_TRANSCODE_* settings, which
/// Tator 1.5.0 never reads; the job-cluster stage removes it where it is left.
pub fn legacy_remote_transcode_secret_name(t: &ValidatedTator) -> String {
    t.child_name("remote-transcode")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn cluster(runs: &[&str]) -> JobCluster {
        serde_json::from_value(serde_json::json!({
            "name": "gpu", "kubeconfigSecret": {"name": "k"}, "namespace": "jobs",
            "runs": runs, "organization": 1
        }))
        .unwrap()
    }

    #[test]
    fn transcode_clusters_get_templates_and_algorithm_clusters_only_roles() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let o = objects(&t, &cluster(&["transcode"]), "1.5.0");
        assert_eq!(o.templates.as_ref().unwrap().len(), 2);
        assert_eq!(o.namespace.metadata.name.as_deref(), Some("jobs"));
        assert_eq!(
            o.namespace.metadata.labels.as_ref().unwrap()["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        assert_eq!(
            o.token_secret.type_.as_deref(),
            Some("kubernetes.io/service-account-token")
        );
        assert!(o.copied_secrets.contains(&"tator-buckets".to_string()));
        let o = objects(&t, &cluster(&["algorithms"]), "1.5.0");
        assert!(o.templates.unwrap().is_empty());
        assert_eq!(o.roles.len(), 2);
        for r in &o.roles {
            assert!(r.metadata.owner_references.is_none());
            assert_eq!(
                r.metadata.labels.as_ref().unwrap()[OWNER_UID_LABEL],
                t.owner.uid
            );
        }
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            host_port("https://127.0.0.1:6443"),
            Some(("127.0.0.1".into(), 6443))
        );
        assert_eq!(
            host_port("https://k8s.example.org"),
            Some(("k8s.example.org".into(), 443))
        );
        assert_eq!(
            host_port("https://[::1]:8443/x"),
            Some(("::1".into(), 8443))
        );
        assert_eq!(host_port("http://x:1"), None);
    }
}
