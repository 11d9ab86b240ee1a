//! Local copies of the children, filled by the controller's own watches (the same watches that
//! trigger reconciles), so that a reconcile that would change nothing sends nothing: apply skips
//! a child whose live copy already has what the operator would send, and prune lists from here.

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::{CronJob, Job},
    core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Resource,
    runtime::reflector::{self, ObjectRef, Store, store::Writer},
};
use serde::Serialize;
use serde_json::Value;

use crate::build::common::short_hash;

/// Annotation on every applied child: a hash of what the operator sent.
pub const APPLIED_HASH_ANNOTATION: &str = "tator.io/applied-hash";

/// Readers of the child caches.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub daemon_sets: Store<DaemonSet>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub stateful_sets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub disruption_budgets: Store<PodDisruptionBudget>,
    pub claims: Store<PersistentVolumeClaim>,
}

/// Writers of the child caches, handed to the watches.
pub struct CacheWriters {
    pub deployments: Writer<Deployment>,
    pub daemon_sets: Writer<DaemonSet>,
    pub service_accounts: Writer<ServiceAccount>,
    pub roles: Writer<Role>,
    pub role_bindings: Writer<RoleBinding>,
    pub stateful_sets: Writer<StatefulSet>,
    pub services: Writer<Service>,
    pub config_maps: Writer<ConfigMap>,
    pub jobs: Writer<Job>,
    pub cron_jobs: Writer<CronJob>,
    pub autoscalers: Writer<HorizontalPodAutoscaler>,
    pub disruption_budgets: Writer<PodDisruptionBudget>,
    pub claims: Writer<PersistentVolumeClaim>,
}

impl Caches {
    /// Empty caches and their writers.
    pub fn new() -> (Self, CacheWriters) {
        let (deployments, wd) = reflector::store();
        let (daemon_sets, wds) = reflector::store();
        let (service_accounts, wsa) = reflector::store();
        let (roles, wr) = reflector::store();
        let (role_bindings, wrb) = reflector::store();
        let (stateful_sets, ws) = reflector::store();
        let (services, wsv) = reflector::store();
        let (config_maps, wc) = reflector::store();
        let (jobs, wj) = reflector::store();
        let (cron_jobs, wcj) = reflector::store();
        let (autoscalers, wa) = reflector::store();
        let (disruption_budgets, wp) = reflector::store();
        let (claims, wcl) = reflector::store();
        (
            Self {
                deployments,
                daemon_sets,
                service_accounts,
                roles,
                role_bindings,
                stateful_sets,
                services,
                config_maps,
                jobs,
                cron_jobs,
                autoscalers,
                disruption_budgets,
                claims,
            },
            CacheWriters {
                deployments: wd,
                daemon_sets: wds,
                service_accounts: wsa,
                roles: wr,
                role_bindings: wrb,
                stateful_sets: ws,
                services: wsv,
                config_maps: wc,
                jobs: wj,
                cron_jobs: wcj,
                autoscalers: wa,
                disruption_budgets: wp,
                claims: wcl,
            },
        )
    }
}

/// The cache of one kind (None for kinds the controller does not watch: those are applied and
/// listed without one).
pub trait Cached: Resource<DynamicType = ()> + Clone + Sized + 'static {
    fn store(c: &Caches) -> Option<&Store<Self>>;
}

macro_rules! cached {
    ($kind:ty, $field:ident) => {
        impl Cached for $kind {
            fn store(c: &Caches) -> Option<&Store<Self>> {
                Some(&c.$field)
            }
        }
    };
    ($kind:ty) => {
        impl Cached for $kind {
            fn store(_: &Caches) -> Option<&Store<Self>> {
                None
            }
        }
    };
}
cached!(ServiceAccount, service_accounts);
cached!(Role, roles);
cached!(RoleBinding, role_bindings);
cached!(DaemonSet, daemon_sets);
cached!(Deployment, deployments);
cached!(StatefulSet, stateful_sets);
cached!(Service, services);
cached!(ConfigMap, config_maps);
cached!(Job, jobs);
cached!(CronJob, cron_jobs);
cached!(HorizontalPodAutoscaler, autoscalers);
cached!(PodDisruptionBudget, disruption_budgets);
cached!(PersistentVolumeClaim, claims);

/// The cache of one kind, once its watch has listed everything (None before).
pub fn synced<K: Cached>(caches: Option<&Caches>) -> Option<&Store<K>> {
    use futures::FutureExt;
    let store = K::store(caches?)?;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
        .then_some(store)
}

/// The cached live copy of a child, if the watch has seen it.
pub fn live<K: Cached>(caches: Option<&Caches>, ns: &str, name: &str) -> Option<K> {
    let store = K::store(caches?)?;
    store
        .get(&ObjectRef::new(name).within(ns))
        .map(|o| (*o).clone())
}

/// Hash of an object as the operator sends it.
pub fn applied_hash<K: Serialize>(obj: &K) -> String {
    serde_json::to_vec(obj)
        .map(|b| short_hash(&b, 16))
        .unwrap_or_default()
}

/// Whether every field of `desired` has the same value in `live` (fields the API server or other
/// managers added are ignored). Lists must match item by item.
pub fn contained(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Null, _) => true,
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, v)| match l.get(k) {
            Some(lv) => contained(v, lv),
            // Go's `omitempty`: the API server drops empty strings, lists and maps, false and 0.
            None => is_zero(v),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(a, b)| contained(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Whether applying `desired` (carrying its applied-hash annotation) would change nothing on
/// `live`: the annotation matches (nothing was dropped from what the operator sends) and every
/// sent field still has the sent value (nobody edited it).
pub fn unchanged<K: Resource + Serialize>(desired: &K, live: &K) -> bool {
    let want = desired
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH_ANNOTATION));
    let have = live
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH_ANNOTATION));
    if want.is_none() || want != have {
        return false;
    }
    match (serde_json::to_value(desired), serde_json::to_value(live)) {
        (Ok(d), Ok(l)) => contained(&d, &l),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_ignores_added_fields_but_not_edits() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}]}}});
        let live = json!({"spec": {"replicas": 2, "progressDeadlineSeconds": 600,
                          "template": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}]}},
                          "status": {"readyReplicas": 2}});
        assert!(contained(&desired, &live));
        let edited = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "a", "image": "x"}]}}});
        assert!(!contained(&desired, &edited));
        let extra_item = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}});
        assert!(!contained(&desired, &extra_item));
        assert!(contained(&json!({"n": 1}), &json!({"n": 1.0})));
        // omitempty: an empty value the API server dropped is not a difference
        assert!(contained(
            &json!({"env": [{"name": "A", "value": ""}]}),
            &json!({"env": [{"name": "A"}]})
        ));
        assert!(!contained(
            &json!({"env": [{"name": "A", "value": "x"}]}),
            &json!({"env": [{"name": "A"}]})
        ));
    }
}
