//! Secrets by consent: a Secret the spec names is used only when it says it is meant for this
//! TatorDeployment. Whoever may edit a TatorDeployment may not necessarily read every Secret of
//! the namespace; without this rule they could make the operator send any of them to a host of
//! their choosing (a "database", a "job cluster").
//!
//! A Secret consents with the annotation [`ANNOTATION`] listing TatorDeployment names (comma
//! separated) or `*` for every TatorDeployment of its namespace. Secrets the operator created for
//! this TatorDeployment (owner reference) need nothing. Only metadata is read here, never values.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client, core::PartialObjectMeta};

use crate::validate::ValidatedTator;

/// The annotation by which a Secret consents to be used by TatorDeployments.
pub const ANNOTATION: &str = "tator.io/tator-deployments";

/// Annotation cert-manager puts on the Secrets it writes for a Certificate.
const CERT_MANAGER_CERTIFICATE: &str = "cert-manager.io/certificate-name";

/// Whether the operator asks Secrets for consent (the operator's `--secret-consent`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A Secret the spec names must carry the annotation (or be the operator's own).
    #[default]
    Required,
    /// Any Secret of the namespace may be named (the behaviour before consent existed).
    Off,
}

/// A Secret the spec names, with the field that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub field: String,
}

/// Every Secret the spec names and the operator or Tator's pods would use: managed-service
/// credentials and CAs, bucket keys, the API token, the first administrator, the TLS certificate,
/// pull Secrets (copied to job clusters) and job-cluster kubeconfigs, those of clusters still
/// being removed included.
pub fn named(t: &ValidatedTator, removed_clusters: &[String]) -> Vec<Named> {
    let s = &t.spec;
    let mut out = Vec::new();
    let mut add = |name: &str, field: String| {
        if !name.is_empty() {
            out.push(Named {
                name: name.to_string(),
                field,
            });
        }
    };
    if let Some(pg) = &s.postgres.external {
        add(
            &pg.credentials_secret.name,
            "spec.postgres.external.credentialsSecret".into(),
        );
        if let Some(ca) = &pg.ca_secret {
            add(&ca.name, "spec.postgres.external.caSecret".into());
        }
    }
    if let Some(p) = s
        .redis
        .external
        .as_ref()
        .and_then(|r| r.password_secret.as_ref())
    {
        add(&p.name, "spec.redis.external.passwordSecret".into());
    }
    if let Some(es) = &s.elasticsearch.external {
        if let Some(c) = &es.credentials_secret {
            add(
                &c.name,
                "spec.elasticsearch.external.credentialsSecret".into(),
            );
        }
        if let Some(ca) = &es.ca_secret {
            add(&ca.name, "spec.elasticsearch.external.caSecret".into());
        }
    }
    let os = &s.object_storage;
    for (which, bucket) in [
        ("live", Some(&os.live)),
        ("upload", os.upload.as_ref()),
        ("backup", os.backup.as_ref()),
    ] {
        if let Some(e) = bucket.and_then(|b| b.external.as_ref()) {
            add(
                &e.credentials_secret,
                format!("spec.objectStorage.{which}.external.credentialsSecret"),
            );
        }
    }
    for (i, b) in s.buckets.iter().enumerate() {
        add(
            &b.credentials_secret,
            format!("spec.buckets[{i}].credentialsSecret"),
        );
    }
    if let Some(a) = &s.api_access {
        add(&a.token_secret.name, "spec.apiAccess.tokenSecret".into());
    }
    if let Some(a) = &s.admin {
        add(&a.secret_name, "spec.admin.secretName".into());
    }
    if let Some(name) = s.tls.as_ref().and_then(|t| t.secret_name.as_ref()) {
        add(name, "spec.tls.secretName".into());
    }
    for (i, p) in s.image.pull_secrets.iter().enumerate() {
        add(p, format!("spec.image.pullSecrets[{i}]"));
    }
    for (i, c) in s.job_clusters.iter().enumerate() {
        add(
            &c.kubeconfig_secret.name,
            format!("spec.jobClusters[{i}].kubeconfigSecret"),
        );
    }
    for name in removed_clusters {
        add(name, "status.jobClusters (a cluster being removed)".into());
    }
    out
}

/// Whether a Secret with this metadata may be used by the TatorDeployment `t`.
pub fn allows(meta: &ObjectMeta, t: &ValidatedTator) -> bool {
    // The Secret cert-manager writes for the Certificate the operator created for this
    // installation (tls.issuerRef).
    let certificate = t
        .spec
        .tls
        .as_ref()
        .is_some_and(|tls| tls.issuer_ref.is_some())
        && meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(CERT_MANAGER_CERTIFICATE))
            .is_some_and(|c| *c == t.child_name(crate::builders::names::TLS));
    consents(meta, &t.name, &t.owner.uid) || certificate
}

/// Whether a Secret consents to the TatorDeployment `name` (uid `uid`): the annotation lists it
/// (or `*`), or the Secret is the operator's own for it.
pub fn consents(meta: &ObjectMeta, name: &str, uid: &str) -> bool {
    let own = meta.owner_references.iter().flatten().any(|o| o.uid == uid);
    own || meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
        .is_some_and(|v| v.split(',').map(str::trim).any(|n| n == "*" || n == name))
}

/// What the fetch stage learnt about the named Secrets: their metadata (None: missing).
#[derive(Clone, Debug, Default)]
pub struct SecretFacts {
    pub secrets: Vec<(Named, Option<ObjectMeta>)>,
}

impl SecretFacts {
    /// Named Secrets that exist but do not consent.
    pub fn refused<'a>(&'a self, t: &ValidatedTator) -> Vec<&'a Named> {
        let mut seen = std::collections::BTreeSet::new();
        self.secrets
            .iter()
            .filter(|(_, m)| m.as_ref().is_some_and(|m| !allows(m, t)))
            .map(|(n, _)| n)
            .filter(|n| seen.insert(n.name.as_str()))
            .collect()
    }

    /// The resourceVersion of a named Secret ("" when missing).
    pub fn resource_version(&self, name: &str) -> String {
        self.secrets
            .iter()
            .find(|(n, _)| n.name == name)
            .and_then(|(_, m)| m.as_ref())
            .and_then(|m| m.resource_version.clone())
            .unwrap_or_default()
    }
}

/// Reads the metadata of every named Secret (each name once; values are never read).
pub async fn fetch(
    client: &Client,
    namespace: &str,
    named: Vec<Named>,
) -> Result<SecretFacts, crate::error::Error> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let mut names: Vec<&str> = named.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let reads = names.into_iter().map(|name| {
        let api = api.clone();
        async move {
            let meta: Option<PartialObjectMeta<k8s_openapi::api::core::v1::Secret>> = api
                .get_metadata_opt(name)
                .await
                .map_err(|source| crate::error::Error::Fetch {
                    what: format!("Secret {name}"),
                    source,
                })?;
            Ok::<_, crate::error::Error>((name.to_string(), meta.map(|m| m.metadata)))
        }
    });
    let found: Vec<(String, Option<ObjectMeta>)> = futures::future::try_join_all(reads).await?;
    let secrets = named
        .into_iter()
        .map(|n| {
            let meta = found
                .iter()
                .find(|(name, _)| *name == n.name)
                .and_then(|(_, m)| m.clone());
            (n, meta)
        })
        .collect();
    Ok(SecretFacts { secrets })
}

/// The status message for Secrets that do not consent: each one, the field naming it, and the
/// command that gives consent.
pub fn refusal_message(t: &ValidatedTator, refused: &[&Named]) -> String {
    let list: Vec<String> = refused
        .iter()
        .map(|n| format!("{} (named by {})", n.name, n.field))
        .collect();
    let first = refused.first().map(|n| n.name.as_str()).unwrap_or_default();
    format!(
        "Secret {} is not meant for this TatorDeployment: a Secret the spec names needs the annotation {ANNOTATION} listing \"{}\" (or \"*\"), for example `kubectl annotate secret {first} {ANNOTATION}={}`. Nothing was applied or deleted",
        list.join(", "),
        t.name,
        t.name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    fn tator(extra: serde_json::Value) -> ValidatedTator {
        let mut td = crate::test_fixtures::minimal("1.5.0");
        let mut spec = serde_json::to_value(&td.spec).unwrap();
        json_merge(&mut spec, extra);
        td.spec = serde_json::from_value(spec).unwrap();
        crate::validate::validate(&td).unwrap()
    }

    fn json_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn annotated(value: &str) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(BTreeMap::from([(
                ANNOTATION.to_string(),
                value.to_string(),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_consents_by_name_list_wildcard_or_ownership() {
        let t = tator(serde_json::json!({}));
        assert!(allows(&annotated("tator"), &t));
        assert!(allows(&annotated("other, tator"), &t));
        assert!(allows(&annotated("*"), &t));
        assert!(!allows(&annotated("tator-staging"), &t));
        assert!(!allows(&annotated(""), &t));
        assert!(!allows(&ObjectMeta::default(), &t));
        let owned = ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                uid: t.owner.uid.clone(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(allows(&owned, &t));
        // cert-manager's Secret counts only for the Certificate this installation asked for.
        let cert = |name: &str| ObjectMeta {
            annotations: Some(BTreeMap::from([(
                CERT_MANAGER_CERTIFICATE.to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        };
        assert!(!allows(&cert("tator-tls"), &t));
        let issued = tator(serde_json::json!({"tls": {"issuerRef": {"name": "le"}}}));
        assert!(allows(&cert("tator-tls"), &issued));
        assert!(!allows(&cert("someone-else-tls"), &issued));
    }

    #[test]
    fn every_secret_field_of_the_spec_is_named() {
        let t = tator(serde_json::json!({
            "postgres": {"external": {"host": "db.example.com", "database": "tator",
                "credentialsSecret": {"name": "pg"}, "caSecret": {"name": "pg-ca", "key": "ca.crt"}}},
            "redis": {"external": {"host": "redis.example.com", "passwordSecret": {"name": "rd", "key": "password"}}},
            "elasticsearch": {"external": {"url": "https://es.example.com",
                "credentialsSecret": {"name": "es"}, "caSecret": {"name": "es-ca", "key": "ca.crt"}}},
            "apiAccess": {"tokenSecret": {"name": "token", "key": "token"}},
            "admin": {"secretName": "admin"},
            "tls": {"secretName": "cert"},
            "image": {"pullSecrets": ["pull"]},
        }));
        let names: Vec<String> = named(&t, &["old-kubeconfig".into()])
            .into_iter()
            .map(|n| n.name)
            .collect();
        for want in [
            "pg",
            "pg-ca",
            "rd",
            "es",
            "es-ca",
            "token",
            "admin",
            "cert",
            "pull",
            "old-kubeconfig",
        ] {
            assert!(
                names.contains(&want.to_string()),
                "{want} missing: {names:?}"
            );
        }
        let plain = tator(serde_json::json!({}));
        assert!(named(&plain, &[]).is_empty());
    }

    #[test]
    fn a_secret_named_twice_is_refused_once_and_missing_ones_are_not_refused() {
        let t = tator(serde_json::json!({}));
        let named = |name: &str, field: &str| Named {
            name: name.into(),
            field: field.into(),
        };
        let facts = SecretFacts {
            secrets: vec![
                (
                    named("s3", "spec.objectStorage.live.external.credentialsSecret"),
                    Some(ObjectMeta::default()),
                ),
                (
                    named("ok", "spec.apiAccess.tokenSecret"),
                    Some(annotated("tator")),
                ),
                (named("gone", "spec.admin.secretName"), None),
                (
                    named("s3", "spec.buckets[0].credentialsSecret"),
                    Some(ObjectMeta::default()),
                ),
            ],
        };
        let refused: Vec<&str> = facts.refused(&t).iter().map(|n| n.name.as_str()).collect();
        assert_eq!(refused, ["s3"]);
    }

    #[test]
    fn the_refusal_names_the_secret_its_field_and_the_fix() {
        let t = tator(serde_json::json!({}));
        let n = Named {
            name: "pg".into(),
            field: "spec.postgres.external.credentialsSecret".into(),
        };
        let m = refusal_message(&t, &[&n]);
        assert!(
            m.contains("pg (named by spec.postgres.external.credentialsSecret)"),
            "{m}"
        );
        assert!(
            m.contains("kubectl annotate secret pg tator.io/tator-deployments=tator"),
            "{m}"
        );
    }
}
