//! The reconcile's job-cluster stages: hand each cluster's worker (`crate::remote`) what is
//! desired, then turn the workers' reports into status, register algorithm clusters with Tator,
//! and hold deletion with a finalizer until the clusters are cleaned up.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, api::DeleteParams};
use tator_api::JobCluster;
use tracing::{info, warn};

use crate::{
    builders::remote,
    finding::Finding,
    remote::{Desired, JobClusters, Placement, REMOVAL_GIVE_UP, Report, conditions, read_copies},
};

/// The finalizer that holds deletion until job clusters are cleaned up.
pub const FINALIZER: &str = "tator.io/job-clusters";
/// Annotation that lets deletion go ahead without waiting for unreachable job clusters.
pub const FORCE_DELETE_ANNOTATION: &str = "tator.io/force-delete";

/// What the first stage learnt: each cluster's last report, in spec order.
pub struct Synced {
    pub reports: Vec<(JobCluster, Report)>,
}

/// Hands every job cluster's worker its desired objects. Never waits on another cluster.
pub async fn sync(
    main: &Client,
    jc: &JobClusters,
    t: &crate::validate::ValidatedTator,
) -> Result<Synced, crate::error::Error> {
    use crate::error::Error;
    let version = t
        .serving_version
        .as_ref()
        .unwrap_or(&t.target_version)
        .to_string();
    let mut desired = Vec::new();
    for c in &t.spec.job_clusters {
        let objects = remote::objects(t, c, &version);
        let copies = read_copies(main, &t.namespace, &objects.copied_secrets)
            .await
            .map_err(|source| Error::Fetch {
                what: "Secrets copied to job clusters".into(),
                source,
            })?
            .iter()
            .map(|s| remote::copied_secret(t, c, s))
            .collect();
        let copies: Vec<Secret> = copies;
        desired.push(Desired {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            uid: t.owner.uid.clone(),
            cluster: c.clone(),
            digest: Desired::digest_of(&objects, &copies),
            objects,
            copies,
        });
    }
    let reports = jc.sync(desired, &t.owner.uid);
    let reports: Vec<(JobCluster, Report)> =
        t.spec.job_clusters.iter().cloned().zip(reports).collect();
    if jc.first_sync(&t.owner.uid) {
        remove_legacy_transcode_secret(main, t).await?;
    }
    Ok(Synced { reports })
}

/// Removes the REMOTE_TRANSCODE_* Secret earlier operator versions wrote (Tator 1.5.0 never
/// reads it). Done once per installation and operator process.
async fn remove_legacy_transcode_secret(
    main: &Client,
    t: &crate::validate::ValidatedTator,
) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    let secrets: Api<Secret> = Api::namespaced(main.clone(), &t.namespace);
    let name = remote::legacy_remote_transcode_secret_name(t);
    let owned = secrets
        .get_metadata_opt(&name)
        .await
        .map_err(|source| Error::Fetch {
            what: format!("Secret {name}"),
            source,
        })?
        .is_some_and(|m| {
            m.metadata
                .owner_references
                .unwrap_or_default()
                .iter()
                .any(|o| o.uid == t.owner.uid)
        });
    if owned {
        secrets
            .delete(&name, &DeleteParams::background())
            .await
            .map_err(|source| Error::Prune {
                kind: "Secret",
                name: name.clone(),
                source,
            })?;
        info!(secret = %name, "removed the REMOTE_TRANSCODE_* Secret Tator never reads");
    }
    Ok(())
}

fn condition(
    type_: &str,
    c: &Finding,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    generation: i64,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    let s = if c.ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|p| p.type_ == type_ && p.status == s)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: type_.into(),
        status: s.into(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: since,
        observed_generation: Some(generation),
    }
}

/// Inputs of the second stage.
pub struct Finish<'a> {
    pub api_ready: bool,
    /// Tator's API token (apiAccess), when readable.
    pub api_token: Option<&'a str>,
    pub previous: &'a [tator_api::JobClusterStatus],
    /// spec.paused: nothing is registered or removed.
    pub paused: bool,
}

/// Registers algorithm clusters with Tator, removes what clusters dropped from the spec left
/// behind, and returns the `JobCluster/<name>` conditions and status.jobClusters.
pub async fn finish(
    jc: &JobClusters,
    t: &crate::validate::ValidatedTator,
    synced: &Synced,
    f: Finish<'_>,
) -> (Vec<crate::status::Cond>, Vec<tator_api::JobClusterStatus>) {
    use crate::status::Cond;
    use tator_api::{JobClusterStatus, JobKind};
    let mut conds = Vec::new();
    let mut statuses = Vec::new();
    for (c, r) in &synced.reports {
        let prev = f.previous.iter().find(|p| p.name == c.name);
        let mut entry = JobClusterStatus {
            name: c.name.clone(),
            kubeconfig_secret: c.kubeconfig_secret.name.clone(),
            kubeconfig_key: c.kubeconfig_secret.key.clone(),
            namespace: c.namespace.clone(),
            server: r.server.clone(),
            registered_id: prev.and_then(|p| p.registered_id),
            registered_digest: prev.and_then(|p| p.registered_digest.clone()),
            conditions: Vec::new(),
            objects: if r.objects.is_empty() {
                prev.map(|p| p.objects.clone()).unwrap_or_default()
            } else {
                r.objects.clone()
            },
        };
        // A cluster moved to another namespace or Secret leaves its old objects: record the new
        // place only once the old one is clean (the previous entry is kept until then).
        let registered = if c.runs.contains(&JobKind::Algorithms) {
            Some(
                register(
                    t,
                    c,
                    r,
                    &f,
                    prev.and_then(|p| p.registered_id.zip(p.registered_digest.clone())),
                )
                .await
                .map(|(id, d)| {
                    entry.registered_id = Some(id);
                    entry.registered_digest = Some(d);
                    Finding::new(
                        true,
                        "Registered",
                        format!(
                            "registered in Tator as JobCluster {id} of organization {}",
                            c.organization.unwrap_or_default()
                        ),
                    )
                })
                .unwrap_or_else(|e| e),
            )
        } else {
            None
        };
        let all = conditions(r, registered.as_ref());
        let prev_conds = prev.map(|p| p.conditions.as_slice()).unwrap_or_default();
        entry.conditions = all
            .iter()
            .map(|(k, v)| condition(k, v, prev_conds, t.generation))
            .collect();
        let failing: Vec<String> = all
            .iter()
            .filter(|(_, v)| !v.ok)
            .map(|(k, v)| format!("{k}: {} ({})", v.reason, v.message))
            .collect();
        let first_reason = all
            .iter()
            .find(|(_, v)| !v.ok)
            .map(|(_, v)| v.reason.clone());
        conds.push(match first_reason {
            None => Cond::new(
                &format!("JobCluster/{}", c.name),
                true,
                "Ready",
                format!(
                    "reachable at {}; objects applied in namespace {}",
                    r.server.clone().unwrap_or_default(),
                    c.namespace
                ),
            ),
            Some(reason) => Cond::new(
                &format!("JobCluster/{}", c.name),
                false,
                &reason,
                failing.join("; "),
            ),
        });
        statuses.push(entry);
    }
    // Entries dropped from the spec: remove their objects, then the registration.
    for p in f.previous {
        if t.spec.job_clusters.iter().any(|c| c.name == p.name) {
            continue;
        }
        let type_ = format!("JobCluster/{}", p.name);
        if f.paused {
            statuses.push(p.clone());
            continue;
        }
        let placement = Placement::recorded(&t.namespace, &t.owner.uid, Some(t.name.clone()), p);
        match jc.remove(placement) {
            Some(Ok(())) => {
                if let (Some(id), Some(token)) = (p.registered_id, f.api_token)
                    && let Err((reason, message)) =
                        crate::registration::unregister_job_cluster(t, token, id).await
                {
                    let mut keep = p.clone();
                    keep.objects.clear();
                    statuses.push(keep);
                    conds.push(Cond::new(&type_, false, &reason, message));
                    continue;
                }
                jc.forget_removal(&t.owner.uid, &p.name);
                info!(cluster = %p.name, "job cluster removed");
            }
            Some(Err(e)) => {
                // Without its kubeconfig Secret the cluster cannot be reached however long this
                // waits; otherwise it is retried for REMOVAL_GIVE_UP.
                let hopeless = e.starts_with("SecretNotFound");
                let age = jc.removal_age(&t.owner.uid, &p.name);
                if hopeless || age >= REMOVAL_GIVE_UP {
                    let why = if hopeless {
                        "its kubeconfig Secret is gone".to_string()
                    } else {
                        format!("gave up after {} s", REMOVAL_GIVE_UP.as_secs())
                    };
                    warn!(cluster = %p.name, %why, "job cluster removed from the spec; its objects are left behind");
                    if let (Some(id), Some(token)) = (p.registered_id, f.api_token)
                        && let Err((_, message)) =
                            crate::registration::unregister_job_cluster(t, token, id).await
                    {
                        warn!(cluster = %p.name, %message, "could not unregister the job cluster");
                    }
                    jc.forget_removal(&t.owner.uid, &p.name);
                    // Reported once; the entry is dropped from the status.
                    conds.push(Cond::new(
                        &type_,
                        false,
                        "LeftBehind",
                        format!(
                            "removed from the spec; {why}, so its objects in namespace {} were left behind ({}): {e}",
                            p.namespace,
                            if p.objects.is_empty() { "none recorded".to_string() } else { p.objects.join(", ") }
                        ),
                    ));
                    continue;
                }
                statuses.push(p.clone());
                conds.push(Cond::new(
                    &type_,
                    false,
                    "CleanupFailed",
                    format!(
                        "removed from the spec; its objects could not be deleted yet (retrying for {} s more): {e}",
                        REMOVAL_GIVE_UP.saturating_sub(age).as_secs()
                    ),
                ));
            }
            None => {
                statuses.push(p.clone());
                conds.push(Cond::new(
                    &type_,
                    false,
                    "Removing",
                    "removed from the spec; deleting its objects",
                ));
            }
        }
    }
    (conds, statuses)
}

async fn register(
    t: &crate::validate::ValidatedTator,
    c: &JobCluster,
    r: &Report,
    f: &Finish<'_>,
    previous: Option<(i64, String)>,
) -> Result<(i64, String), Finding> {
    if f.paused {
        return previous
            .ok_or_else(|| Finding::new(false, "Paused", "spec.paused holds registration back"));
    }
    let (Some(creds), Some((host, port))) = (
        &r.credentials,
        c.api_server
            .clone()
            .or_else(|| r.server.clone())
            .as_deref()
            .and_then(remote::host_port),
    ) else {
        // Tator keeps what it was given while the cluster cannot be asked for its token.
        return previous.ok_or_else(|| {
            Finding::new(
                false,
                "WaitingForCluster",
                "registered once the cluster answers and Tator's token exists",
            )
        });
    };
    let body = crate::registration::JobClusterBody {
        name: &c.name,
        host: &host,
        port,
        token: &creds.token,
        cert: &creds.ca,
    };
    // Already registered as it is: nothing to ask of Tator's API.
    if let Some((id, d)) = &previous
        && *d == crate::registration::job_cluster_digest(&body)
    {
        return Ok((*id, d.clone()));
    }
    if !f.api_ready {
        return Err(Finding::new(
            false,
            "WaitingForApi",
            "registered once Tator's REST API is available",
        ));
    }
    let Some(api_token) = f.api_token else {
        return Err(Finding::new(
            false,
            "TokenNotFound",
            "the apiAccess token Secret could not be read",
        ));
    };
    crate::registration::register_job_cluster(
        t,
        api_token,
        c.organization.unwrap_or_default(),
        &body,
        previous.as_ref().map(|(id, d)| (*id, d.as_str())),
    )
    .await
    .map_err(|(reason, message)| Finding::new(false, &reason, message))
}
