//! Validate: turn a `TatorDeployment` into a [`ValidatedTator`] that builders read.
//!
//! The CRD's schema and CEL rules reject most bad input at admission; what they cannot express
//! (for example that `podOverrides` is a valid PodTemplateSpec, or a downgrade relative to the
//! version that is serving) is checked here and reported as a permanent error.

use k8s_openapi::{
    api::core::v1::PodTemplateSpec, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{Resource, ResourceExt};
use semver::Version;
use tator_api::{TatorDeployment, TatorDeploymentSpec};

use crate::error::Error;
use crate::overrides::Policy;

/// Longest TatorDeployment name (also a CEL rule of the CRD): a StatefulSet's pods carry the
/// label `controller-revision-hash: <statefulset>-<10 characters>`, at most 63 characters, and
/// the longest StatefulSet is `<name>-elasticsearch`.
pub const MAX_NAME_LEN: usize = 38;

/// A TatorDeployment whose spec has passed every check, with defaults applied.
#[derive(Clone, Debug)]
pub struct ValidatedTator {
    pub name: String,
    pub namespace: String,
    pub generation: i64,
    pub spec: TatorDeploymentSpec,
    /// The release the spec asks for.
    pub target_version: Version,
    /// The release that is migrated and serving (from status), if any.
    pub serving_version: Option<Version>,
    /// Image tag of the requested release: spec.image.tag, else the catalog's.
    pub target_tag: String,
    /// Image tag of the serving release: the one status recorded, else the catalog's.
    pub serving_tag: Option<String>,
    /// What the requested release needs (the catalog's, or those it assumes for an unknown one).
    pub needs: crate::catalog::Needs,
    pub owner: OwnerReference,
    /// Hash of the resourceVersions of the user's Secrets that Tator's pods read (managed-service
    /// credentials), filled in by the fetch stage: a rotated password rolls those pods.
    pub secrets_hash: Option<String>,
    /// Facts about the cluster the observability builders depend on, filled in by the fetch
    /// stage (defaults in `render`: no prometheus-operator, PodSecurity unknown).
    pub cluster: ClusterFacts,
}

/// What the fetch stage learnt about the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// prometheus-operator's ServiceMonitor and PodMonitor CRDs are installed.
    pub prometheus_operator: bool,
    /// The `pod-security.kubernetes.io/enforce` level of the namespace, when it could be read.
    pub pod_security: Option<String>,
    /// Argo's WorkflowTemplate CRD is installed.
    pub argo: bool,
    /// Name of the cluster's default StorageClass, when the operator may read StorageClasses
    /// and one is marked default (read only when no workflow storage class is configured).
    pub default_storage_class: Option<String>,
    /// KEDA's ScaledObject CRD is installed (read only when a queue is autoscaled).
    pub keda: bool,
    /// The operator's namespace when it runs in the cluster (read only when a queue is
    /// autoscaled): the queue's NetworkPolicy admits its pods when it scales itself.
    pub operator_namespace: Option<String>,
}

/// Where the installation stands between the serving and the requested release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPlan {
    /// The requested release is serving: nothing to migrate.
    Steady(Version),
    /// The requested release must be migrated before it serves.
    Migrate { from: Option<Version>, to: Version },
    /// The spec asks for an older release than the one serving.
    DowngradeRefused {
        serving: Version,
        requested: Version,
    },
}

impl ValidatedTator {
    pub fn plan(&self) -> VersionPlan {
        match &self.serving_version {
            Some(serving) if *serving == self.target_version => {
                VersionPlan::Steady(serving.clone())
            }
            Some(serving) if *serving > self.target_version => VersionPlan::DowngradeRefused {
                serving: serving.clone(),
                requested: self.target_version.clone(),
            },
            from => VersionPlan::Migrate {
                from: from.clone(),
                to: self.target_version.clone(),
            },
        }
    }

    /// Image tag of the Tator images of `version` (the requested or the serving release), which
    /// is also the UI's static path.
    pub fn image_tag(&self, version: &str) -> String {
        if version == self.spec.version {
            return self.target_tag.clone();
        }
        if let (Some(serving), Some(tag)) = (&self.serving_version, &self.serving_tag)
            && serving.to_string() == version
        {
            return tag.clone();
        }
        crate::catalog::tag_of(version).map_or_else(|| version.to_string(), str::to_string)
    }

    /// Prefix of every child's name.
    pub fn child_name(&self, suffix: &str) -> String {
        format!("{}-{}", self.name, suffix)
    }
}

fn parse_version(v: &str, what: &str) -> Result<Version, Error> {
    Version::parse(v)
        .map_err(|e| Error::InvalidSpec(format!("{what} {v:?} is not a release number: {e}")))
}

/// `podOverrides` must parse as a PodTemplateSpec and stay within the policy.
fn check_overrides(path: &str, overrides: &serde_json::Value, policy: Policy) -> Result<(), Error> {
    if overrides.is_null() {
        return Ok(());
    }
    serde_json::from_value::<PodTemplateSpec>(overrides.clone())
        .map_err(|e| Error::InvalidSpec(format!("{path} is not a valid PodTemplateSpec: {e}")))?;
    crate::overrides::check(path, overrides, policy).map_err(Error::InvalidSpec)
}

/// Every `podOverrides` in a spec (as JSON), with its path (`api.podOverrides`).
fn find_overrides<'a>(
    v: &'a serde_json::Value,
    path: &str,
    out: &mut Vec<(String, &'a serde_json::Value)>,
) {
    if let serde_json::Value::Object(map) = v {
        for (k, child) in map {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k == "podOverrides" {
                out.push((here, child));
            } else {
                find_overrides(child, &here, out);
            }
        }
    }
}

/// Checks a TatorDeployment and applies defaults, with the default overrides policy
/// (`restricted`).
pub fn validate(td: &TatorDeployment) -> Result<ValidatedTator, Error> {
    validate_with(td, Policy::default())
}

/// Checks a TatorDeployment and applies defaults; `policy` bounds what `podOverrides` may change.
pub fn validate_with(td: &TatorDeployment, policy: Policy) -> Result<ValidatedTator, Error> {
    let name = td.name_any();
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} is longer than {MAX_NAME_LEN} characters"
        )));
    }
    // A DNS-1035 label, as the Service names derived from it must be (no dots, no leading digit).
    let label = name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !label {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} must be lowercase letters, digits and hyphens, starting with a letter"
        )));
    }
    let namespace = td
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a TatorDeployment must be namespaced".into()))?;
    if namespace == "kube-system" {
        return Err(Error::InvalidSpec(
            "TatorDeployments in kube-system are not reconciled: the operator's rights there would reach the cluster's own components".into(),
        ));
    }
    let owner = td
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidSpec("the object has no uid yet".into()))?;
    let spec = td.spec.clone();
    let target_version = parse_version(&spec.version, "spec.version")?;
    let serving_version = td
        .status
        .as_ref()
        .and_then(|s| s.version.as_deref())
        .and_then(|v| Version::parse(v).ok());
    let target_tag = match (&spec.image.tag, crate::catalog::tag_of(&spec.version)) {
        (Some(tag), _) => tag.clone(),
        (None, Some(tag)) => tag.to_string(),
        (None, None) => {
            let known: Vec<&str> = crate::catalog::RELEASES.iter().map(|r| r.version).collect();
            return Err(Error::UnknownRelease(format!(
                "spec.version {} is not a release this operator knows ({}); set spec.image.tag to the image tag of that release (Tator tags images with the release's git commit) to run it anyway",
                spec.version,
                known.join(", ")
            )));
        }
    };
    let serving_tag = serving_version.as_ref().and_then(|v| {
        let recorded = td
            .status
            .as_ref()
            .and_then(|s| s.image_tag.clone())
            .filter(|t| !t.is_empty());
        recorded.or_else(|| crate::catalog::tag_of(&v.to_string()).map(str::to_string))
    });
    let needs = crate::catalog::needs_of(&spec.version);
    if let Some(a) = &spec.api.autoscaling
        && a.min_replicas > a.max_replicas
    {
        return Err(Error::InvalidSpec(
            "api.autoscaling.minReplicas must not exceed maxReplicas".into(),
        ));
    }
    // A quantity the API server refuses would fail every apply: refused here instead.
    let as_json = serde_json::to_value(&spec).map_err(|e| Error::Serialize {
        what: "the spec".into(),
        source: e,
    })?;
    crate::quantity::check_spec(&as_json).map_err(Error::InvalidSpec)?;
    // Every component's podOverrides, wherever it sits in the spec.
    let mut overrides = Vec::new();
    find_overrides(&as_json, "", &mut overrides);
    for (path, value) in overrides {
        check_overrides(&path, value, policy)?;
    }
    // A CronJob the API server refuses would block every later apply: refused here instead.
    for (job, o) in &spec.maintenance.jobs {
        if let Some(s) = &o.schedule {
            crate::cron::check_schedule(s)
                .map_err(|e| Error::InvalidSpec(format!("maintenance.jobs.{job}.schedule {e}")))?;
        }
    }
    if let Some(zone) = &spec.maintenance.time_zone {
        crate::cron::check_time_zone(zone)
            .map_err(|e| Error::InvalidSpec(format!("maintenance.timeZone {e}")))?;
    }
    Ok(ValidatedTator {
        name,
        namespace,
        generation: td.meta().generation.unwrap_or_default(),
        spec,
        target_version,
        serving_version,
        target_tag,
        serving_tag,
        needs,
        owner,
        secrets_hash: None,
        cluster: ClusterFacts::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::minimal;

    #[test]
    fn names_must_make_valid_service_names() {
        for (name, ok) in [
            ("tator", true),
            ("lab-2", true),
            ("lab.tator", false),
            ("2lab", false),
            ("lab-", false),
            ("Lab", false),
        ] {
            let mut td = minimal("1.5.0");
            td.metadata.name = Some(name.into());
            assert_eq!(validate(&td).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn plans_follow_serving_version() {
        let mut td = minimal("1.5.0");
        let v = validate(&td).unwrap();
        assert!(matches!(v.plan(), VersionPlan::Migrate { from: None, .. }));
        td.status = Some(tator_api::TatorDeploymentStatus {
            version: Some("1.5.0".into()),
            ..Default::default()
        });
        assert_eq!(
            validate(&td).unwrap().plan(),
            VersionPlan::Steady(Version::new(1, 5, 0))
        );
        td.spec.version = "1.6.0".into();
        td.spec.image.tag = Some("a-build-of-1.6.0".into());
        assert!(matches!(
            validate(&td).unwrap().plan(),
            VersionPlan::Migrate { from: Some(_), .. }
        ));
        td.spec.version = "1.4.2".into();
        assert!(matches!(
            validate(&td).unwrap().plan(),
            VersionPlan::DowngradeRefused { .. }
        ));
    }

    #[test]
    fn the_catalog_or_image_tag_gives_the_tag_and_an_unknown_release_is_refused() {
        let t = validate(&minimal("1.5.0")).unwrap();
        assert_eq!(t.target_tag, "dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a");
        assert_eq!(t.image_tag("1.5.0"), t.target_tag);

        let mut td = minimal("1.6.0");
        let err = validate(&td).unwrap_err();
        assert_eq!(err.category(), "UnknownRelease");
        assert!(err.is_permanent());
        assert!(err.to_string().contains("spec.image.tag"), "{err}");

        // With a tag, an unknown release runs with 1.5.0's needs; while 1.5.0 serves, its pods
        // keep 1.5.0's tag.
        td.spec.image.tag = Some("abc123".into());
        td.status = Some(tator_api::TatorDeploymentStatus {
            version: Some("1.5.0".into()),
            ..Default::default()
        });
        let t = validate(&td).unwrap();
        assert_eq!(t.image_tag("1.6.0"), "abc123");
        assert_eq!(
            t.image_tag("1.5.0"),
            "dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a"
        );
        assert_eq!(t.needs, crate::catalog::ASSUMED);
        assert!(matches!(t.plan(), VersionPlan::Migrate { .. }));

        // The tag status recorded for the serving release wins (it may be an uncatalogued one).
        let mut td = minimal("1.7.0");
        td.spec.image.tag = Some("new".into());
        td.status = Some(tator_api::TatorDeploymentStatus {
            version: Some("1.6.0".into()),
            image_tag: Some("abc123".into()),
            ..Default::default()
        });
        let t = validate(&td).unwrap();
        assert_eq!(t.image_tag("1.6.0"), "abc123");
        assert_eq!(t.image_tag("1.7.0"), "new");
    }

    #[test]
    fn invalid_overrides_are_reported_with_the_component() {
        let mut td = minimal("1.5.0");
        td.spec.api.pod.pod_overrides = Some(serde_json::json!({"spec": {"containers": "nope"}}));
        let err = validate(&td).unwrap_err().to_string();
        assert!(err.contains("api.podOverrides"), "{err}");
    }
}
