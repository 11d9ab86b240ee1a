//! The operator's own queue scaler: for a worker Deployment whose spec asks for autoscaling and
//! no KEDA, a task reads (authenticated, over TLS when the Redis asks for it) the length of its
//! rq queue (jobs waiting, `rq:queue:<queue>`, and
//! running, `rq:wip:<queue>`) every few seconds and writes the Deployment's `replicas` through
//! its scale subresource, under a field manager of its own. The reconcile then leaves
//! `replicas` out of what it applies, so the two never fight; nor does the scaler run when KEDA
//! owns the Deployment.
//!
//! Scaling up is immediate; scaling down waits until fewer workers were enough for the whole
//! cool-down. A worker is never asked to stop while the jobs running need it: running jobs count.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;

use crate::{
    builders::queue_workers::{QueueRedis, Target},
    checks::{CheckError, Password, RedisConnection, RedisTarget, secret_value},
};
use tracing::{info, warn};

/// Field manager of the scaler's writes of `replicas`.
pub const FIELD_MANAGER: &str = "tator-operator-scaler";
/// How often the queue is read.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Time limit of each read of the queue.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Workers wanted for `jobs` jobs (waiting and running).
pub fn wanted(t: &Target, jobs: u64) -> i32 {
    let per = u64::try_from(t.jobs_per_worker.max(1)).unwrap_or(1);
    let n = i32::try_from(jobs.div_ceil(per)).unwrap_or(i32::MAX);
    n.clamp(t.min, t.max.max(t.min))
}

/// The scaling decision: the replicas to write, if any. `enough_since` is when the current
/// count last stopped being needed (None: it is needed now), updated here.
pub fn decide(
    current: i32,
    wanted: i32,
    cooldown: Duration,
    now: Instant,
    enough_since: &mut Option<Instant>,
) -> Option<i32> {
    if wanted >= current {
        *enough_since = None;
        return (wanted > current).then_some(wanted);
    }
    let since = *enough_since.get_or_insert(now);
    (now.duration_since(since) >= cooldown).then(|| {
        *enough_since = None;
        wanted
    })
}

/// Jobs waiting and running on the queue.
pub async fn queue_jobs(redis: &RedisTarget, queue: &str) -> Result<u64, CheckError> {
    let work = async {
        let mut conn = RedisConnection::open(redis).await?;
        let waiting = conn
            .integer(&["LLEN", &format!("rq:queue:{queue}")])
            .await?;
        let running = conn.integer(&["ZCARD", &format!("rq:wip:{queue}")]).await?;
        Ok(waiting + running)
    };
    tokio::time::timeout(READ_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(CheckError {
                reason: "Unreachable",
                message: format!("no answer within {} s", READ_TIMEOUT.as_secs()),
            })
        })
}

/// The queue's Redis as the task reaches it, its password read from the Secret (and read again
/// after a refusal, for a rotated password).
async fn connect_target(
    client: &Client,
    namespace: &str,
    redis: &QueueRedis,
    cached: &mut Option<Password>,
) -> Result<RedisTarget, CheckError> {
    let password = match &redis.password {
        None => None,
        Some((name, key)) => match cached {
            Some(p) => Some(p.clone()),
            None => {
                let p = Password::new(secret_value(client, namespace, name, key).await?);
                *cached = Some(p.clone());
                Some(p)
            }
        },
    };
    Ok(RedisTarget {
        host: redis.host.clone(),
        port: redis.port,
        tls: redis.tls,
        password,
    })
}

struct Task {
    target: watch::Sender<Target>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Every scaler task of this operator, by (TatorDeployment uid, Deployment name).
pub struct Scalers {
    client: Client,
    tasks: Mutex<HashMap<(String, String), Task>>,
    /// The last queue length each task read (for the status and metrics).
    lengths: Arc<Mutex<HashMap<(String, String), u64>>>,
}

impl Scalers {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            tasks: Mutex::new(HashMap::new()),
            lengths: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs a task for each target of the TatorDeployment `uid` and stops its others.
    pub fn sync(&self, uid: &str, targets: Vec<Target>) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        tasks.retain(|(u, name), _| u != uid || targets.iter().any(|t| t.deployment == *name));
        for target in targets {
            let key = (uid.to_string(), target.deployment.clone());
            if let Some(task) = tasks.get(&key) {
                task.target.send_if_modified(|cur| {
                    let changed = *cur != target;
                    if changed {
                        *cur = target.clone();
                    }
                    changed
                });
                continue;
            }
            let (tx, rx) = watch::channel(target);
            let handle = tokio::spawn(run(
                self.client.clone(),
                rx,
                self.lengths.clone(),
                key.clone(),
            ));
            tasks.insert(key, Task { target: tx, handle });
        }
    }

    /// Stops every task of a TatorDeployment (deleted, or no longer autoscaled).
    pub fn stop(&self, uid: &str) {
        self.sync(uid, Vec::new());
    }

    /// The last queue length read for a worker Deployment, if its task has read one.
    pub fn queue_length(&self, uid: &str, deployment: &str) -> Option<u64> {
        self.lengths
            .lock()
            .ok()?
            .get(&(uid.to_string(), deployment.to_string()))
            .copied()
    }
}

async fn run(
    client: Client,
    mut rx: watch::Receiver<Target>,
    lengths: Arc<Mutex<HashMap<(String, String), u64>>>,
    key: (String, String),
) {
    let mut enough_since: Option<Instant> = None;
    let mut failing = false;
    let mut password: Option<Password> = None;
    loop {
        let t = rx.borrow_and_update().clone();
        let api: Api<Deployment> = Api::namespaced(client.clone(), &t.namespace);
        let read = match connect_target(&client, &t.namespace, &t.redis, &mut password).await {
            Ok(target) => queue_jobs(&target, &t.queue).await,
            Err(e) => Err(e),
        };
        if read
            .as_ref()
            .is_err_and(|e| e.reason == "AuthenticationFailed")
        {
            // Read the Secret again next time: the password may have been rotated.
            password = None;
        }
        match read {
            Ok(jobs) => {
                failing = false;
                if let Ok(mut l) = lengths.lock() {
                    l.insert(key.clone(), jobs);
                }
                let want = wanted(&t, jobs);
                match api.get_scale(&t.deployment).await {
                    Ok(scale) => {
                        let current = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
                        if let Some(n) =
                            decide(current, want, t.cooldown, Instant::now(), &mut enough_since)
                        {
                            let patch = serde_json::json!({"spec": {"replicas": n}});
                            match api
                                .patch_scale(
                                    &t.deployment,
                                    &PatchParams {
                                        field_manager: Some(FIELD_MANAGER.into()),
                                        ..Default::default()
                                    },
                                    &Patch::Merge(&patch),
                                )
                                .await
                            {
                                Ok(_) => {
                                    info!(deployment = %t.deployment, namespace = %t.namespace, jobs, from = current, to = n, "scaled queue workers")
                                }
                                Err(e) => {
                                    warn!(deployment = %t.deployment, error = %crate::error::brief(&e), "could not scale queue workers")
                                }
                            }
                        }
                    }
                    // Not created yet (no release serves): look again later.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        warn!(deployment = %t.deployment, error = %crate::error::brief(&e), "could not read the worker scale")
                    }
                }
            }
            Err(e) => {
                // The replicas stay as they are while the queue cannot be read.
                if !failing {
                    warn!(deployment = %t.deployment, queue = %t.queue, reason = e.reason, error = %e.message, "cannot read the queue; workers stay as they are");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                // Perhaps another Redis or Secret: read the password anew.
                password = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(min: i32, max: i32, per: i32) -> Target {
        Target {
            namespace: "ns".into(),
            deployment: "w".into(),
            redis: QueueRedis {
                host: "q".into(),
                port: 6379,
                tls: false,
                password: None,
            },
            queue: "transcodes".into(),
            min,
            max,
            jobs_per_worker: per,
            cooldown: Duration::from_secs(300),
        }
    }

    #[test]
    fn workers_follow_the_jobs_within_bounds() {
        let t = target(0, 4, 1);
        assert_eq!(wanted(&t, 0), 0);
        assert_eq!(wanted(&t, 3), 3);
        assert_eq!(wanted(&t, 20), 4);
        let t = target(1, 10, 3);
        assert_eq!(wanted(&t, 0), 1);
        assert_eq!(wanted(&t, 7), 3);
        assert_eq!(wanted(&t, u64::MAX), 10);
    }

    #[test]
    fn up_at_once_down_after_the_cooldown() {
        let cool = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut since = None;
        assert_eq!(decide(0, 4, cool, t0, &mut since), Some(4));
        assert_eq!(decide(4, 4, cool, t0, &mut since), None);
        // Fewer needed: nothing until a whole cool-down has passed.
        assert_eq!(decide(4, 1, cool, t0, &mut since), None);
        assert_eq!(
            decide(4, 0, cool, t0 + Duration::from_secs(59), &mut since),
            None
        );
        // Need again within the cool-down: the clock starts over.
        assert_eq!(
            decide(4, 4, cool, t0 + Duration::from_secs(59), &mut since),
            None
        );
        assert_eq!(
            decide(4, 0, cool, t0 + Duration::from_secs(100), &mut since),
            None
        );
        assert_eq!(
            decide(4, 0, cool, t0 + Duration::from_secs(161), &mut since),
            Some(0)
        );
    }
}
