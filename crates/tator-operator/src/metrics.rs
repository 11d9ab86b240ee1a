//! `/metrics` (OpenMetrics text, prometheus-client): reconciles, their duration and errors by
//! stable category, installations' conditions and ready replicas, migrations, and Kubernetes API
//! requests by verb and resource. No label ever carries a secret: labels are names, namespaces,
//! condition types, component names, error categories and API verbs.

use std::sync::{Arc, Mutex};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tator_api::TatorDeploymentStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub namespace: String,
    pub name: String,
    /// The condition type (exported as `type`).
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub namespace: String,
    pub name: String,
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// The serving version last seen per TatorDeployment (for the migrations counter).
    seen_versions: Mutex<std::collections::HashMap<(String, String), Option<String>>>,
    pub reconciles: Counter,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<CategoryLabels, Counter>,
    pub conditions: Family<ConditionLabels, Gauge>,
    pub ready_replicas: Family<ComponentLabels, Gauge>,
    pub desired_replicas: Family<ComponentLabels, Gauge>,
    pub migrations: Family<ResultLabels, Counter>,
    pub api_requests: Family<RequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tator_operator");
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles of TatorDeployments",
            reconciles.clone(),
        );
        let reconcile_duration =
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            reconcile_errors.clone(),
        );
        let conditions = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "condition",
            "Status conditions of each TatorDeployment (1 True, 0 otherwise)",
            conditions.clone(),
        );
        let ready_replicas = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "component_ready_replicas",
            "Ready replicas of each component",
            ready_replicas.clone(),
        );
        let desired_replicas = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "component_desired_replicas",
            "Desired replicas of each component",
            desired_replicas.clone(),
        );
        let migrations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "migrations",
            "Database migrations finished, by result (succeeded, failed)",
            migrations.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "kubernetes_requests",
            "Requests to the Kubernetes API by verb and resource",
            api_requests.clone(),
        );
        // Every series of a fixed label set exists from the start (at 0), so that rates and
        // alerts work before the first error or migration.
        for category in crate::error::Error::CATEGORIES {
            let _ = reconcile_errors.get_or_create(&CategoryLabels {
                category: (*category).into(),
            });
        }
        for result in ["succeeded", "failed"] {
            let _ = migrations.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        Self {
            registry: Mutex::new(registry),
            seen_versions: Mutex::default(),
            reconciles,
            reconcile_duration,
            reconcile_errors,
            conditions,
            ready_replicas,
            desired_replicas,
            migrations,
            api_requests,
        }
    }

    /// Records what a reconcile wrote to status: conditions, replicas, and migrations that
    /// finished since the previous status.
    pub fn observe_status(
        &self,
        namespace: &str,
        name: &str,
        old: Option<&TatorDeploymentStatus>,
        new: &TatorDeploymentStatus,
    ) {
        for c in &new.conditions {
            let labels = ConditionLabels {
                namespace: namespace.into(),
                name: name.into(),
                r#type: c.type_.clone(),
            };
            self.conditions
                .get_or_create(&labels)
                .set(i64::from(c.status == "True"));
        }
        for (component, s) in &new.components {
            let labels = ComponentLabels {
                namespace: namespace.into(),
                name: name.into(),
                component: component.clone(),
            };
            self.ready_replicas
                .get_or_create(&labels)
                .set(i64::from(s.ready));
            self.desired_replicas
                .get_or_create(&labels)
                .set(i64::from(s.desired));
        }
        let migration = |s: Option<&TatorDeploymentStatus>| {
            s.and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Migrations")
                    .map(|c| c.reason.clone())
            })
        };
        // A migration succeeded when the serving version moves (the Migrations condition may go
        // from Running to UpToDate between two status writes); it failed when the condition
        // turns Failed.
        let old_version = old.and_then(|s| s.version.clone());
        // Counted once per object and version, however stale the status a reconcile started from.
        let first_time = self.seen_versions.lock().is_ok_and(|mut seen| {
            let key = (namespace.to_string(), name.to_string());
            let was = seen.insert(key, new.version.clone());
            was.flatten().or(old_version) != new.version
        });
        if new.version.is_some() && first_time {
            self.migrations
                .get_or_create(&ResultLabels {
                    result: "succeeded".into(),
                })
                .inc();
        }
        let (before, after) = (migration(old), migration(Some(new)));
        if before != after && after.as_deref() == Some("Failed") {
            self.migrations
                .get_or_create(&ResultLabels {
                    result: "failed".into(),
                })
                .inc();
        }
    }

    /// Forgets a deleted TatorDeployment's series.
    pub fn forget(&self, namespace: &str, name: &str, status: Option<&TatorDeploymentStatus>) {
        let Some(st) = status else { return };
        for c in &st.conditions {
            self.conditions.remove(&ConditionLabels {
                namespace: namespace.into(),
                name: name.into(),
                r#type: c.type_.clone(),
            });
        }
        for component in st.components.keys() {
            let labels = ComponentLabels {
                namespace: namespace.into(),
                name: name.into(),
                component: component.clone(),
            };
            self.ready_replicas.remove(&labels);
            self.desired_replicas.remove(&labels);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = encode(&mut out, &registry);
        }
        out
    }

    /// A router serving `/metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/metrics",
                get(|State(m): State<Arc<Metrics>>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                        .into_response()
                }),
            )
            .with_state(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use tator_api::ComponentStatus;

    fn cond(t: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }
    }

    #[test]
    fn status_becomes_series() {
        let m = Metrics::new();
        let old = TatorDeploymentStatus {
            conditions: vec![cond("Migrations", "False", "Running")],
            ..Default::default()
        };
        let mut new = TatorDeploymentStatus {
            version: Some("1.5.0".into()),
            conditions: vec![
                cond("Ready", "True", "AllComponentsAvailable"),
                cond("Migrations", "True", "Succeeded"),
            ],
            ..Default::default()
        };
        new.components.insert(
            "api".into(),
            ComponentStatus {
                ready: 1,
                desired: 2,
            },
        );
        m.observe_status("ns", "tator", Some(&old), &new);
        // A reconcile that started from a stale status does not count the migration again.
        m.observe_status("ns", "tator", Some(&old), &new);
        m.reconciles.inc();
        let text = m.encode();
        assert!(
            text.contains(
                r#"tator_operator_condition{namespace="ns",name="tator",type="Ready"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"tator_operator_component_ready_replicas{namespace="ns",name="tator",component="api"} 1"#), "{text}");
        assert!(
            text.contains(r#"tator_operator_migrations_total{result="succeeded"} 1"#),
            "{text}"
        );
        assert!(text.contains("tator_operator_reconciles_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        m.forget("ns", "tator", Some(&new));
        assert!(!m.encode().contains(r#"type="Ready""#));
    }
}
