//! `run --install-crd`: the operator applies its own CRD at start-up, so that upgrading the
//! operator (with `helm upgrade`, a new plain-YAML install or a new image) also upgrades the CRD.
//! Helm never upgrades what a chart ships in its `crds/` folder, which would leave new fields
//! pruned by an old schema.
//!
//! Server-side apply with the operator's field manager, then a wait until the API server reports
//! the CRD `Established`. A CRD last applied by a newer operator (annotation
//! [`OPERATOR_VERSION_ANNOTATION`]) is left alone, so an old replica restarting during a rolling
//! upgrade does not take new fields away.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt,
    api::{Patch, PatchParams},
};
use tator_api::TatorDeployment;
use tracing::{info, warn};

use crate::apply::FIELD_MANAGER;

/// Annotation on the CRD: the version of the operator that last applied it.
pub const OPERATOR_VERSION_ANNOTATION: &str = "tator.io/operator-version";

/// What `install` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (created or updated) and Established.
    Applied,
    /// A newer operator applied it; left as it is.
    KeptNewer(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("could not serialize the CRD: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("could not read the CRD {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not apply the CRD {name}: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the CRD {name} was not Established within {seconds} s ({last})")]
    NotEstablished {
        name: String,
        seconds: u64,
        last: String,
    },
}

/// The CRD this binary would apply, with its version annotation.
pub fn desired() -> CustomResourceDefinition {
    let mut crd = TatorDeployment::crd();
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            OPERATOR_VERSION_ANNOTATION.into(),
            env!("CARGO_PKG_VERSION").into(),
        );
    crd
}

/// Whether the version that last applied the live CRD is newer than this binary.
fn newer_than_us(live: &CustomResourceDefinition) -> Option<String> {
    let theirs = live
        .metadata
        .annotations
        .as_ref()?
        .get(OPERATOR_VERSION_ANNOTATION)?;
    let ours = semver::Version::parse(env!("CARGO_PKG_VERSION")).ok()?;
    let parsed = semver::Version::parse(theirs).ok()?;
    (parsed > ours).then(|| theirs.clone())
}

fn established(crd: &CustomResourceDefinition) -> Result<(), String> {
    let conds = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if conds
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True")
    {
        return Ok(());
    }
    Err(conds
        .iter()
        .map(|c| {
            format!(
                "{}={} {}",
                c.type_,
                c.status,
                c.message.clone().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// Applies the CRD and waits (up to `timeout`) until it is Established.
pub async fn install(client: &Client, timeout: Duration) -> Result<Outcome, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = desired();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let live = api.get_opt(&name).await.map_err(|source| CrdError::Read {
        name: name.clone(),
        source,
    })?;
    if let Some(version) = live.as_ref().and_then(newer_than_us) {
        warn!(crd = %name, applied_by = %version, ours = env!("CARGO_PKG_VERSION"),
              "the CRD was applied by a newer operator: leaving it as it is");
        return Ok(Outcome::KeptNewer(version));
    }
    let body = serde_json::to_value(&crd).map_err(CrdError::Serialize)?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| CrdError::Apply {
        name: name.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match api.get(&name).await {
            Ok(live) => match established(&live) {
                Ok(()) => break,
                Err(state) => state,
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(CrdError::NotEstablished {
                name,
                seconds: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    info!(crd = %name, version = env!("CARGO_PKG_VERSION"), "applied the CRD");
    Ok(Outcome::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_operator_wins() {
        let mut live = desired();
        assert_eq!(newer_than_us(&live), None);
        live.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(OPERATOR_VERSION_ANNOTATION.into(), "999.0.0".into());
        assert_eq!(newer_than_us(&live), Some("999.0.0".into()));
        live.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(OPERATOR_VERSION_ANNOTATION.into(), "0.0.1".into());
        assert_eq!(newer_than_us(&live), None);
    }

    #[test]
    fn desired_is_the_generated_crd_plus_the_annotation() {
        let crd = desired();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("tatordeployments.tator.io")
        );
        assert_eq!(crd.spec, TatorDeployment::crd().spec);
    }
}
