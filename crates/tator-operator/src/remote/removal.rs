//! Removal of what an installation made in a job cluster: on deletion, and in the background for
//! clusters taken out of the spec.

use super::*;

/// Where a TatorDeployment's objects in one job cluster are.
#[derive(Clone, Debug)]
pub struct Placement {
    pub namespace: String,
    /// The TatorDeployment (asked to reconcile after a removal attempt).
    pub owner_name: Option<String>,
    pub cluster: String,
    pub kubeconfig: KubeconfigSecret,
    pub remote_namespace: String,
    pub uid: String,
}

impl Placement {
    /// Where status says a cluster's objects were made.
    pub fn recorded(
        namespace: &str,
        uid: &str,
        owner_name: Option<String>,
        p: &JobClusterStatus,
    ) -> Self {
        let key = if p.kubeconfig_key.is_empty() {
            "kubeconfig".to_string()
        } else {
            p.kubeconfig_key.clone()
        };
        Self {
            namespace: namespace.to_string(),
            owner_name,
            cluster: p.name.clone(),
            kubeconfig: KubeconfigSecret {
                name: p.kubeconfig_secret.clone(),
                key,
            },
            remote_namespace: p.namespace.clone(),
            uid: uid.to_string(),
        }
    }

    /// Where the spec puts a cluster's objects.
    pub fn of(namespace: &str, uid: &str, c: &JobCluster) -> Self {
        Self {
            namespace: namespace.to_string(),
            owner_name: None,
            cluster: c.name.clone(),
            kubeconfig: c.kubeconfig_secret.clone(),
            remote_namespace: c.namespace.clone(),
            uid: uid.to_string(),
        }
    }
}

/// Removes every object one TatorDeployment made in a job cluster (and the namespace, when the
/// operator created it). Err lists what is left and why.
pub async fn cleanup(main: &Client, p: &Placement) -> Result<(), String> {
    let work = async {
        let mut cached = None;
        // Removal only deletes what the operator made there; consent was checked when the
        // entry was last in the spec (and by the reconcile while it is being removed).
        let s = session(main, &p.namespace, &p.kubeconfig, None, &mut cached)
            .await
            .map_err(|c| format!("{}: {}", c.reason, c.message))?;
        let client = s.client.clone();
        let ns = p.remote_namespace.as_str();
        let argo = crd_present(&client, ns, &workflow_template_resource())
            .await
            .map_err(|e| format!("{}: {}", e.what, reach_error(&e.source).message))?;
        let deleted = prune(&client, ns, &p.uid, &[], argo)
            .await
            .map_err(|e| format!("{}: {}", e.what, reach_error(&e.source).message))?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if let Some(m) = namespaces
            .get_metadata_opt(ns)
            .await
            .map_err(|e| format!("Namespace {ns}: {}", reach_error(&e).message))?
        {
            let ours = m.labels().get(crate::builders::names::OWNER_UID_LABEL) == Some(&p.uid);
            if ours && m.metadata.deletion_timestamp.is_none() {
                namespaces
                    .delete(ns, &DeleteParams::background())
                    .await
                    .map_err(|e| format!("Namespace {ns}: {}", reach_error(&e).message))?;
            }
        }
        debug!(cluster = %p.cluster, ?deleted, "job cluster cleaned up");
        Ok::<(), String>(())
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
    }
}

#[derive(Default)]
pub(super) struct Removal {
    pub(super) result: Option<Result<(), String>>,
    pub(super) started: Option<std::time::Instant>,
}

/// How long the objects of a cluster removed from the spec are retried before they are left
/// behind (the default cleanupTimeoutSeconds; the entry's own setting left with it).
pub const REMOVAL_GIVE_UP: Duration = Duration::from_secs(300);

impl JobClusters {
    /// Starts (once) the removal of one cluster's objects; returns its outcome when known. A
    /// failed attempt is retried with backoff; each attempt asks for a reconcile.
    pub fn remove(&self, p: Placement) -> Option<Result<(), String>> {
        let key = (p.uid.clone(), p.cluster.clone());
        let Ok(mut map) = self.removals.lock() else {
            return None;
        };
        if let Some(r) = map.get(&key) {
            return r.lock().ok().and_then(|r| r.result.clone());
        }
        let slot = Arc::new(Mutex::new(Removal {
            result: None,
            started: Some(std::time::Instant::now()),
        }));
        map.insert(key, slot.clone());
        let main = self.main.clone();
        let trigger = self.trigger.lock().ok().and_then(|t| t.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                let r = cleanup(&main, &p).await;
                let done = r.is_ok();
                if let Ok(mut s) = slot.lock() {
                    s.result = Some(r);
                }
                if let Some(tx) = &trigger
                    && let Some(name) = p.owner_name.clone()
                {
                    let _ = tx.unbounded_send(ObjectRef::new(&name).within(&p.namespace));
                }
                if done {
                    return;
                }
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                if Arc::strong_count(&slot) == 1 {
                    // Forgotten (the TatorDeployment is gone).
                    return;
                }
            }
        });
        None
    }

    /// How long the removal of one cluster's objects has been going on.
    pub fn removal_age(&self, uid: &str, cluster: &str) -> Duration {
        self.removals
            .lock()
            .ok()
            .and_then(|map| {
                map.get(&(uid.to_string(), cluster.to_string()))
                    .and_then(|r| r.lock().ok().and_then(|r| r.started))
            })
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Drops a finished removal.
    pub fn forget_removal(&self, uid: &str, cluster: &str) {
        if let Ok(mut map) = self.removals.lock() {
            map.remove(&(uid.to_string(), cluster.to_string()));
        }
    }
}
