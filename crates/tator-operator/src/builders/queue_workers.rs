//! Workers that follow the length of their rq queue: the transcode workers (queue `transcodes`
//! in the transcode queue's Redis, no password) and, opt-in, the db and image workers (queues
//! `db_jobs` and `image_jobs` in Tator's Redis, with its password and TLS). One description of
//! each, from which both scalers are built: KEDA's ScaledObject when KEDA scales them, else the
//! operator's own scaler target. Pure.

use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use tator_api::QueueAutoscaling;

use super::{
    common::child_meta,
    features::{transcodes_enabled, uses_keda},
    names::{DB_WORKER, IMAGE_WORKER, QUEUE_NAME, QUEUE_PORT, TRANSCODE_QUEUE, TRANSCODE_WORKER},
    tator_env,
};
use crate::validate::ValidatedTator;

/// Where a queue is: a Redis, and the Secret key of its password if it has one (in the
/// Deployment's namespace; read by the scaler task, never part of the target itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRedis {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// Secret name and key.
    pub password: Option<(String, String)>,
}

/// One worker Deployment to scale, and its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub deployment: String,
    pub redis: QueueRedis,
    pub queue: String,
    pub min: i32,
    pub max: i32,
    pub jobs_per_worker: i32,
    pub cooldown: Duration,
}

/// One autoscaled worker Deployment and the queue it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueWorkers<'a> {
    /// Component (and Deployment suffix) of the workers.
    pub component: &'static str,
    /// The rq queue.
    pub queue: &'static str,
    pub autoscaling: &'a QueueAutoscaling,
    /// The queue's Redis as seen from the operator and KEDA (a Service's full name in-cluster).
    pub redis: QueueRedis,
}

/// Every autoscaled worker Deployment of the installation.
pub fn all(t: &ValidatedTator) -> Vec<QueueWorkers<'_>> {
    let mut out = Vec::new();
    if transcodes_enabled(t)
        && let Some(a) = &t.spec.transcodes.workers.autoscaling
    {
        out.push(QueueWorkers {
            component: TRANSCODE_WORKER,
            queue: QUEUE_NAME,
            autoscaling: a,
            redis: QueueRedis {
                host: in_cluster_host(t, &queue_host(t)),
                port: u16::try_from(QUEUE_PORT).unwrap_or(6379),
                tls: false,
                password: None,
            },
        });
    }
    let main = main_redis(t);
    for (component, queue, settings) in [
        (DB_WORKER, "db_jobs", &t.spec.workers.db),
        (IMAGE_WORKER, "image_jobs", &t.spec.workers.image),
    ] {
        if let Some(a) = &settings.autoscaling {
            out.push(QueueWorkers {
                component,
                queue,
                autoscaling: a,
                redis: main.clone(),
            });
        }
    }
    out
}

/// Whether a worker Deployment (by component) scales on its queue.
pub fn autoscaled(t: &ValidatedTator, component: &str) -> bool {
    all(t).iter().any(|w| w.component == component)
}

/// KEDA's ScaledObject.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ))
}

/// Tator's Redis, where the db and image queues are.
fn main_redis(t: &ValidatedTator) -> QueueRedis {
    let e = tator_env::endpoints(t);
    let host = if t.spec.redis.external.is_some() {
        e.redis_host.clone()
    } else {
        in_cluster_host(t, &e.redis_host)
    };
    QueueRedis {
        host,
        port: u16::try_from(e.redis_port).unwrap_or(6379),
        tls: e.redis_tls,
        password: e.redis_password.map(|p| (p.name, p.key)),
    }
}

/// A Service's name as reached from another namespace (the operator's, KEDA's).
fn in_cluster_host(t: &ValidatedTator, service: &str) -> String {
    format!("{service}.{}.svc", t.namespace)
}

/// What the operator's own scaler watches, once a release serves (`serving`): each autoscaled
/// worker Deployment KEDA does not scale.
pub fn scaler_targets(t: &ValidatedTator, serving: bool) -> Vec<Target> {
    if !serving {
        return Vec::new();
    }
    all(t)
        .into_iter()
        .filter(|w| !uses_keda(t, w.autoscaling))
        .map(|w| {
            let a = w.autoscaling;
            Target {
                namespace: t.namespace.clone(),
                deployment: t.child_name(w.component),
                redis: w.redis,
                queue: w.queue.into(),
                min: a.min_replicas,
                max: a.max_replicas,
                jobs_per_worker: a.jobs_per_worker,
                cooldown: std::time::Duration::from_secs(
                    u64::try_from(a.cooldown_seconds).unwrap_or(0),
                ),
            }
        })
        .collect()
}

/// The ScaledObjects, when KEDA scales workers and its CRDs are installed: KEDA's redis scaler
/// on the rq list of waiting jobs; the password, when there is one, from the workers' own env.
pub fn scaled_objects(t: &ValidatedTator) -> Vec<DynamicObject> {
    if !t.cluster.keda {
        return Vec::new();
    }
    all(t)
        .into_iter()
        .filter(|w| uses_keda(t, w.autoscaling))
        .map(|w| {
            let a = w.autoscaling;
            let name = t.child_name(w.component);
            let mut metadata = serde_json::json!({
                "address": format!("{}:{}", w.redis.host, w.redis.port),
                "listName": format!("rq:queue:{}", w.queue),
                "listLength": a.jobs_per_worker.to_string(),
                "activationListLength": "0",
            });
            if w.redis.tls {
                metadata["enableTLS"] = "true".into();
            }
            // A password is Tator's, which the workers hold in REDIS_PASSWORD.
            if w.redis.password.is_some() {
                metadata["passwordFromEnv"] = "REDIS_PASSWORD".into();
            }
            let mut obj =
                DynamicObject::new(&name, &scaled_object_resource()).data(serde_json::json!({
                    "spec": {
                        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                        "minReplicaCount": a.min_replicas,
                        "maxReplicaCount": a.max_replicas,
                        "cooldownPeriod": a.cooldown_seconds,
                        "pollingInterval": 5,
                        "triggers": [{"type": "redis", "metadata": metadata}],
                    },
                }));
            obj.metadata = child_meta(t, name, w.component, None);
            obj
        })
        .collect()
}

/// Host of the queue's Redis, as the service and workers reach it.
pub fn queue_host(t: &ValidatedTator) -> String {
    t.child_name(TRANSCODE_QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn autoscaling(v: serde_json::Value) -> Option<QueueAutoscaling> {
        Some(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn db_and_image_workers_scale_on_tators_redis_with_its_password() {
        let mut td = minimal("1.5.0");
        td.spec.workers.image.autoscaling = autoscaling(serde_json::json!({"maxReplicas": 5}));
        let mut t = validate(&td).unwrap();
        assert!(autoscaled(&t, IMAGE_WORKER));
        assert!(!autoscaled(&t, DB_WORKER));
        let targets = scaler_targets(&t, true);
        assert_eq!(targets.len(), 1);
        let target = &targets[0];
        assert_eq!(target.deployment, "tator-image-worker");
        assert_eq!(target.queue, "image_jobs");
        assert_eq!(target.redis.host, "tator-redis.tator.svc");
        assert_eq!(
            target.redis.password,
            Some(("tator-redis".into(), "password".into()))
        );
        assert!(scaled_objects(&t).is_empty());
        // With KEDA: the ScaledObject reads the password from the workers' REDIS_PASSWORD.
        t.cluster.keda = true;
        assert!(scaler_targets(&t, true).is_empty());
        let so = scaled_objects(&t);
        assert_eq!(so.len(), 1);
        let m = &so[0].data["spec"]["triggers"][0]["metadata"];
        assert_eq!(m["listName"], "rq:queue:image_jobs");
        assert_eq!(m["passwordFromEnv"], "REDIS_PASSWORD");
        assert_eq!(m["address"], "tator-redis.tator.svc:6379");
        assert!(m.get("enableTLS").is_none());
    }

    #[test]
    fn a_managed_redis_is_reached_at_its_own_address_with_tls() {
        let mut td = minimal("1.5.0");
        td.spec.workers.db.autoscaling = autoscaling(serde_json::json!({"scaler": "Keda"}));
        td.spec.redis.external = Some(
            serde_json::from_value(serde_json::json!({
                "host": "cache.example.com", "port": 6380, "tls": true,
                "passwordSecret": {"name": "cache", "key": "pw"}}))
            .unwrap(),
        );
        let mut t = validate(&td).unwrap();
        t.cluster.keda = true;
        let so = scaled_objects(&t);
        let m = &so[0].data["spec"]["triggers"][0]["metadata"];
        assert_eq!(m["address"], "cache.example.com:6380");
        assert_eq!(m["enableTLS"], "true");
        assert_eq!(m["listName"], "rq:queue:db_jobs");
    }
}
