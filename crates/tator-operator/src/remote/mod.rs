//! The job-cluster session: one background worker per cluster keeps its objects applied with a
//! client of its own, checks that the cluster answers, and reports what it saw; removals of
//! clusters taken out of the spec run here too. The reconcile's job-cluster stages are in
//! `controller::job_clusters`; the objects themselves are built by `builders::remote`.
//!
//! Reconciles never wait on another cluster: they hand the worker what is desired and read the
//! worker's last report. A worker checks every [`CHECK_INTERVAL`] while the cluster is healthy
//! and backs off (2 s doubling to [`MAX_BACKOFF`]) while it is not; every check re-reads the
//! kubeconfig Secret, so a rotated credential is used at the next check. When a report changes
//! the worker asks for a reconcile of its TatorDeployment.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::{
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::reflector::ObjectRef,
};
use serde::{Serialize, de::DeserializeOwned};
use tator_api::{JobCluster, JobClusterStatus, KubeconfigSecret, TatorDeployment};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::finding::Finding;
use crate::{
    apply::FIELD_MANAGER,
    builders::{
        common::short_hash,
        remote::{self, CA_KEY, RemoteObjects, TOKEN_KEY},
        workflows::workflow_template_resource,
    },
};

mod removal;
mod session;
mod worker;

pub use removal::{Placement, REMOVAL_GIVE_UP, cleanup};
pub use worker::{FULL_APPLY_INTERVAL, backoff};
// The three parts use each other's helpers through `use super::*`.
use removal::*;
use session::*;
use worker::*;

/// Checks of a healthy cluster.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait between attempts on a failing cluster.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest a single check (connect, apply, prune) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Tator's credentials for a cluster. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub token: String,
    pub ca: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// What a worker last saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub reachable: Finding,
    pub templates: Finding,
    /// The API server URL from the kubeconfig.
    pub server: Option<String>,
    /// Tator's token and the cluster CA, once the token controller filled the Secret.
    pub credentials: Option<Credentials>,
    /// Objects the worker keeps in the cluster (Kind/name).
    pub objects: Vec<String>,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            reachable: Finding::pending(),
            templates: Finding::pending(),
            server: None,
            credentials: None,
            objects: Vec::new(),
        }
    }
}

/// What a worker is asked to keep in its cluster (no Debug: it holds Secret copies).
#[derive(Clone, PartialEq)]
pub struct Desired {
    /// Namespace of the TatorDeployment (and of the kubeconfig Secret).
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub cluster: JobCluster,
    pub objects: RemoteObjects,
    /// Copies of the Secrets `objects.copied_secrets` names (read from this cluster).
    pub copies: Vec<Secret>,
    /// Digest of the objects and copies: a worker applies again when it changes.
    pub digest: String,
}

impl Desired {
    /// Digest of what a cluster should hold.
    pub fn digest_of(objects: &RemoteObjects, copies: &[Secret]) -> String {
        let text = serde_json::to_string(&(
            &objects.namespace,
            &objects.service_accounts,
            &objects.roles,
            &objects.role_bindings,
            &objects.token_secret,
            copies,
            objects.templates.as_ref().ok(),
            objects.templates.as_ref().err(),
        ))
        .unwrap_or_default();
        short_hash(text.as_bytes(), 32)
    }
}

struct Worker {
    desired: watch::Sender<Desired>,
    report: Arc<Mutex<Report>>,
    /// Checks the worker has finished.
    checks: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (uid of the TatorDeployment, job cluster name).
type ClusterKey = (String, String);

/// Every job-cluster worker of this operator.
pub struct JobClusters {
    main: Client,
    /// Whether kubeconfig Secrets must consent (re-checked at every read).
    consent: crate::consent::Mode,
    workers: Mutex<HashMap<ClusterKey, Worker>>,
    removals: Mutex<HashMap<ClusterKey, Arc<Mutex<Removal>>>>,
    trigger: Mutex<Option<UnboundedSender<ObjectRef<TatorDeployment>>>>,
    /// Installations whose one-off clean-ups this process has done.
    synced_once: Mutex<HashSet<String>>,
}

impl JobClusters {
    pub fn new(main: Client, consent: crate::consent::Mode) -> Self {
        Self {
            main,
            consent,
            workers: Mutex::new(HashMap::new()),
            removals: Mutex::new(HashMap::new()),
            trigger: Mutex::new(None),
            synced_once: Mutex::new(HashSet::new()),
        }
    }

    /// True the first time an installation's job clusters are synced by this process.
    pub fn first_sync(&self, uid: &str) -> bool {
        self.synced_once
            .lock()
            .map(|mut s| s.insert(uid.to_string()))
            .unwrap_or(false)
    }

    /// Where workers ask for reconciles.
    pub fn set_trigger(&self, tx: UnboundedSender<ObjectRef<TatorDeployment>>) {
        if let Ok(mut t) = self.trigger.lock() {
            *t = Some(tx);
        }
    }

    /// Hands each cluster's worker what is desired (starting workers as needed, stopping those
    /// of clusters no longer listed) and returns their last reports, in spec order.
    pub fn sync(&self, desired: Vec<Desired>, uid: &str) -> Vec<Report> {
        let Ok(mut workers) = self.workers.lock() else {
            return Vec::new();
        };
        let keep: BTreeSet<String> = desired.iter().map(|d| d.cluster.name.clone()).collect();
        workers.retain(|(u, name), _| u != uid || keep.contains(name));
        let mut out = Vec::new();
        for d in desired {
            let key = (uid.to_string(), d.cluster.name.clone());
            if let Some(w) = workers.get(&key) {
                w.desired.send_if_modified(|cur| {
                    if *cur == d {
                        false
                    } else {
                        *cur = d.clone();
                        true
                    }
                });
                out.push(w.report.lock().map(|r| r.clone()).unwrap_or_default());
                continue;
            }
            let (tx, rx) = watch::channel(d.clone());
            let report = Arc::new(Mutex::new(Report::default()));
            let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let trigger = self.trigger.lock().ok().and_then(|t| t.clone());
            let task = tokio::spawn(run_worker(
                self.main.clone(),
                self.consent,
                rx,
                (report.clone(), checks.clone()),
                trigger,
            ));
            out.push(Report::default());
            workers.insert(
                key,
                Worker {
                    desired: tx,
                    report,
                    checks,
                    task,
                },
            );
        }
        out
    }

    /// Checks the worker of one cluster has finished (None: no such worker): what tests wait on
    /// to see that a check happened.
    pub fn checks(&self, uid: &str, cluster: &str) -> Option<u64> {
        let workers = self.workers.lock().ok()?;
        let w = workers.get(&(uid.to_string(), cluster.to_string()))?;
        Some(w.checks.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Stops every worker of one TatorDeployment (it is being deleted).
    pub fn stop(&self, uid: &str) {
        if let Ok(mut workers) = self.workers.lock() {
            workers.retain(|(u, _), _| u != uid);
        }
        if let Ok(mut once) = self.synced_once.lock() {
            once.remove(uid);
        }
    }
}

/// Reads the Secrets a job cluster gets copies of (missing ones are skipped: a pull Secret that
/// does not exist here would not work there either).
pub async fn read_copies(
    main: &Client,
    ns: &str,
    names: &[String],
) -> Result<Vec<Secret>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(main.clone(), ns);
    let mut out = Vec::new();
    for n in names {
        if let Some(s) = api.get_opt(n).await? {
            out.push(s);
        } else {
            warn!(secret = %n, "a Secret to copy to job clusters does not exist");
        }
    }
    Ok(out)
}

/// Conditions of a cluster as status shows them.
pub fn conditions(r: &Report, registered: Option<&Finding>) -> BTreeMap<&'static str, Finding> {
    let mut m = BTreeMap::from([
        ("Reachable", r.reachable.clone()),
        ("TemplatesReady", r.templates.clone()),
    ]);
    if let Some(reg) = registered {
        m.insert("Registered", reg.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::session::refuse;
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(9), MAX_BACKOFF);
    }

    #[test]
    fn kubeconfigs_that_run_commands_or_read_files_are_refused() {
        let exec = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"#;
        let kc = Kubeconfig::from_yaml(exec).unwrap();
        assert!(refuse(&kc).unwrap().contains("exec plugin"));
        let file = exec.replace(
            "{exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}",
            "{tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}",
        );
        let kc = Kubeconfig::from_yaml(&file).unwrap();
        assert!(refuse(&kc).unwrap().contains("refers to files"));
        let ok = exec.replace(
            "{exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}",
            "{token: abc}",
        );
        assert!(refuse(&Kubeconfig::from_yaml(&ok).unwrap()).is_none());
        let plain = ok.replace("https://127.0.0.1:1", "http://127.0.0.1:1");
        assert!(
            refuse(&Kubeconfig::from_yaml(&plain).unwrap())
                .unwrap()
                .contains("not an https:// server")
        );
        let skip = ok.replace(
            "{server: \"https://127.0.0.1:1\"}",
            "{server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}",
        );
        assert!(
            refuse(&Kubeconfig::from_yaml(&skip).unwrap())
                .unwrap()
                .contains("skips TLS verification")
        );
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials {
            token: "secret-token".into(),
            ca: "ca".into(),
        };
        assert!(!format!("{c:?}").contains("secret-token"));
        let r = Report {
            credentials: Some(c),
            ..Report::default()
        };
        assert!(!format!("{r:?}").contains("secret-token"));
    }
}
