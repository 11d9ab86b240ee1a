//! `render`: every child the operator would apply, without a cluster (like `helm template`).
//!
//! It uses the same validate and build stages as the controller and assumes the requested release
//! is migrated and serving (the steady state). Generated Secrets are not rendered: their values
//! are created once in the cluster. What the controller reads from the cluster is not known here
//! (Argo, prometheus-operator, the namespace's PodSecurity level, the default StorageClass that
//! `WORKFLOW_STORAGE_CLASSES` falls back to without `workflows.storageClasses`).

use kube::CustomResourceExt;
use serde::Serialize;
use tator_api::TatorDeployment;

use crate::{
    builders::{self, migrations},
    error::Error,
    validate::{self, VersionPlan},
};

/// Plain scalars that YAML 1.2 (our emitter) reads as strings but YAML 1.1 parsers (kubectl's,
/// Helm's) read as booleans.
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// YAML that kubectl reads as we mean it: strings such as `yes` (the default `cpuWorker: yes`
/// node selector) are quoted, or a YAML 1.1 parser would turn them into booleans.
pub fn to_yaml(value: &serde_json::Value) -> Result<String, Error> {
    let yaml = serde_yaml::to_string(value).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let quoted = line
            .rsplit_once(": ")
            .filter(|(key, v)| YAML11_BOOLEANS.contains(v) && !key.trim_start().is_empty())
            .map(|(key, v)| format!("{key}: '{v}'"))
            .or_else(|| {
                line.trim_start()
                    .strip_prefix("- ")
                    .filter(|v| YAML11_BOOLEANS.contains(v))
                    .map(|v| format!("{}- '{v}'", &line[..line.len() - line.trim_start().len()]))
            });
        out.push_str(quoted.as_deref().unwrap_or(line));
        out.push('\n');
    }
    Ok(out)
}

fn push_yaml<T: Serialize>(out: &mut String, obj: &T) -> Result<(), Error> {
    let value = serde_json::to_value(obj).map_err(|source| Error::Serialize {
        what: "a child".into(),
        source,
    })?;
    let yaml = to_yaml(&value)?;
    out.push_str("---\n");
    out.push_str(&yaml);
    Ok(())
}

/// Every child as JSON values, in apply order.
/// The spec as the operator would see it once created (a uid and a namespace filled in).
fn validated(td: &TatorDeployment) -> Result<validate::ValidatedTator, Error> {
    let mut td = td.clone();
    if td.metadata.uid.is_none() {
        td.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    }
    if td.metadata.namespace.is_none() {
        td.metadata.namespace = Some("default".into());
    }
    validate::validate(&td)
}

fn values(c: &builders::children::Children) -> Result<Vec<serde_json::Value>, Error> {
    c.to_values().map_err(|source| Error::Serialize {
        what: "a child".into(),
        source,
    })
}

/// The web tier of a migrated installation.
fn web_tier(t: &validate::ValidatedTator) -> builders::children::Children {
    let rollout = migrations::decide(
        VersionPlan::Steady(t.target_version.clone()),
        None,
        migrations::JobState::Missing,
        true,
    );
    builders::build(t, &rollout)
}

pub fn render_values(td: &TatorDeployment) -> Result<Vec<serde_json::Value>, Error> {
    let t = validated(td)?;
    let mut desired = builders::build_data(&t);
    desired.extend(web_tier(&t));
    values(&desired)
}

/// A new installation's children in the order the operator creates them (for the benchmark's
/// staged floor): the data tier; what the web tier holds while the first migration runs (the
/// migrations Job, the shared volume, NGINX, no Tator process); then the migrated web tier.
pub fn render_tiers(td: &TatorDeployment) -> Result<[Vec<serde_json::Value>; 3], Error> {
    let t = validated(td)?;
    let version = t.target_version.to_string();
    let migrating = migrations::decide(
        VersionPlan::Migrate {
            from: None,
            to: t.target_version.clone(),
        },
        Some(migrations::job(&t, &version)),
        migrations::JobState::Missing,
        true,
    );
    Ok([
        values(&builders::build_data(&t))?,
        values(&builders::build(&t, &migrating))?,
        values(&web_tier(&t))?,
    ])
}

pub fn render(manifest: &str) -> Result<String, Error> {
    let td: TatorDeployment = serde_yaml::from_str(manifest)
        .map_err(|e| Error::InvalidSpec(format!("the manifest is not a TatorDeployment: {e}")))?;
    let mut out = String::new();
    for v in render_values(&td)? {
        push_yaml(&mut out, &v)?;
    }
    Ok(out)
}

/// The CRD YAML.
pub fn crd_yaml() -> Result<String, Error> {
    let crd = TatorDeployment::crd();
    let value = serde_json::to_value(&crd).map_err(|source| Error::Serialize {
        what: "the CRD".into(),
        source,
    })?;
    let yaml = to_yaml(&value)?;
    Ok(format!(
        "# Generated by `tator-operator crd` (make crds) from crates/tator-api. Do not edit.\n---\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn yaml_11_booleans_are_quoted_and_read_back_as_strings() {
        let v = serde_json::json!({"nodeSelector": {"cpuWorker": "yes", "on": "off"},
            "list": ["no", "keep"], "real": true, "text": "say yes"});
        let y = to_yaml(&v).unwrap();
        assert!(y.contains("cpuWorker: 'yes'"), "{y}");
        assert!(y.contains("on: 'off'"), "{y}");
        assert!(y.contains("- 'no'"), "{y}");
        assert!(y.contains("real: true"), "{y}");
        assert!(y.contains("text: say yes"), "{y}");
        let back: serde_json::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(back, v);
    }
}
