//! The operator's own queue scaler: for a worker Deployment whose spec asks for autoscaling and
//! no KEDA, a task reads the length of its rq queue (jobs waiting, `rq:queue:<queue>`, and
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
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    sync::watch,
};
use tracing::{info, warn};

/// Field manager of the scaler's writes of `replicas`.
pub const FIELD_MANAGER: &str = "tator-operator-scaler";
/// How often the queue is read.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Time limit of each read of the queue.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// One worker Deployment to scale, and its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub deployment: String,
    /// Host and port of the queue's Redis (no password).
    pub redis: (String, u16),
    pub queue: String,
    pub min: i32,
    pub max: i32,
    pub jobs_per_worker: i32,
    pub cooldown: Duration,
}

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
pub async fn queue_jobs(redis: &(String, u16), queue: &str) -> Result<u64, String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect((redis.0.as_str(), redis.1))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", redis.0, redis.1))?;
        let (read, mut write) = stream.into_split();
        // Answers are one short line each; never read more than that.
        let mut reader = BufReader::new(read.take(4096));
        let mut total = 0u64;
        for (cmd, key) in [
            ("LLEN", format!("rq:queue:{queue}")),
            ("ZCARD", format!("rq:wip:{queue}")),
        ] {
            write
                .write_all(&crate::checks::resp_command(&[cmd, &key]))
                .await
                .map_err(|e| format!("connection lost: {e}"))?;
            let line = crate::checks::resp_line(&mut reader)
                .await
                .map_err(|e| e.message)?;
            let n = line
                .strip_prefix(':')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("unexpected answer to {cmd}"))?;
            total += n;
        }
        Ok(total)
    };
    tokio::time::timeout(READ_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {} s", READ_TIMEOUT.as_secs()))?
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
    loop {
        let t = rx.borrow_and_update().clone();
        let api: Api<Deployment> = Api::namespaced(client.clone(), &t.namespace);
        match queue_jobs(&t.redis, &t.queue).await {
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
                    warn!(deployment = %t.deployment, queue = %t.queue, error = %e, "cannot read the queue; workers stay as they are");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            changed = rx.changed() => if changed.is_err() { return; },
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
            redis: ("q".into(), 6379),
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
