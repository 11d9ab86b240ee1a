//! The Tator operator: runs a whole Tator deployment from one `TatorDeployment` resource.
//!
//! One module per stage of the reconcile: [`validate`] (spec checks and defaults, pure),
//! [`controller::fetch`] (the reads before building, one `Facts` value), [`builders`] (pure
//! builders of every child), [`apply`] (server-side apply by tier, then pruning), observation
//! ([`dependencies`], [`objstore`]), external writes ([`registration`] through [`tator_rest`],
//! job clusters through [`remote`]) and [`status`] (conditions from what was applied, pure).
//! [`controller`] wires them to watches and runs them in order; [`controller::decide`] holds
//! its pure decisions (requeue, Events, deletion).
//!
//! The kinds of children are listed once, in `builders::children::child_kinds!`: the
//! `Children` lists, the watches and their caches ([`cache`]), apply, hold and prune, and the
//! third-party CRDs watched are generated from that table.

pub mod apply;
pub mod bounded;
pub mod builders;
pub mod cache;
pub mod catalog;
pub mod checks;
pub mod client;
pub mod consent;
pub mod controller;
pub mod crd_install;
pub mod cron;
pub mod dependencies;
pub mod error;
pub mod finding;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod objstore;
pub mod overrides;
pub mod quantity;
pub mod registration;
pub mod remote;
pub mod render;
pub mod scaler;
pub mod status;
pub mod tator_rest;
pub mod validate;
pub mod watched;
pub mod workload;

#[cfg(test)]
pub(crate) mod test_fixtures {
    use kube::api::ObjectMeta;
    use tator_api::{TatorDeployment, TatorDeploymentSpec};

    /// A minimal TatorDeployment (domain + version), as the API server would store it.
    pub fn minimal(version: &str) -> TatorDeployment {
        let spec: TatorDeploymentSpec = serde_json::from_value(serde_json::json!({
            "version": version,
            "domain": "tator.example.com",
        }))
        .unwrap();
        let mut td = TatorDeployment::new("tator", spec);
        td.metadata = ObjectMeta {
            name: Some("tator".into()),
            namespace: Some("tator".into()),
            uid: Some("0000-1111".into()),
            generation: Some(1),
            ..Default::default()
        };
        td
    }
}
