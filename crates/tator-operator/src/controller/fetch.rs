//! Fetch: the reads of the main cluster a reconcile needs before it builds, made concurrently in
//! one place and returned as one plain [`Facts`] value. Children come from the watch caches,
//! CRD presence from the CRD watches ([`super::crds`]; where they may not watch, a CRD once seen
//! installed is remembered for a while); Secret values are read only after every Secret the
//! spec names has consented.
//!
//! Two reads stay where they are, because they follow a write of the same reconcile: the object
//! storage keys (after the generated Secrets are created) and the dependency checks (after the
//! data tier is applied).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::batch::v1::Job;
use kube::{ResourceExt, discovery::ApiResource, runtime::reflector::ObjectRef};
use tator_api::{JobKind, TatorDeployment};

use super::Context;
use crate::{
    apply, builders, checks,
    consent::{self, Named},
    error::Error,
    validate::{ClusterFacts, ValidatedTator, VersionPlan},
};

/// How long a CRD seen installed is taken as installed without asking again. An uninstalled one
/// is asked about at every reconcile, so installing Argo or prometheus-operator is noticed at
/// once; removing one is noticed within this time.
const CRD_SEEN_FOR: Duration = Duration::from_secs(300);

/// The cluster's default StorageClass as last read, and when: StorageClasses are not watched, and
/// the default rarely moves; it is read again after [`CRD_SEEN_FOR`].
#[derive(Default)]
pub struct DefaultClass(Mutex<Option<(Option<String>, Instant)>>);

impl DefaultClass {
    async fn get(&self, ctx: &Context) -> Result<Option<String>, Error> {
        if let Some((class, _)) = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.clone())
            .filter(|(_, at)| at.elapsed() < CRD_SEEN_FOR)
        {
            return Ok(class);
        }
        let class = apply::default_storage_class(&ctx.client).await?;
        if let Ok(mut m) = self.0.lock() {
            *m = Some((class.clone(), Instant::now()));
        }
        Ok(class)
    }
}

/// What the fetch stage read.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Named Secrets that exist but do not consent (empty when consent is off). When not
    /// empty, nothing else was read.
    pub refused: Vec<Named>,
    /// What the builders need to know about the cluster.
    pub cluster: ClusterFacts,
    /// Hash of the named Secrets' resourceVersions that Tator's pods read (a rotated password
    /// rolls them).
    pub secrets_hash: Option<String>,
    /// The migrations Job of the requested release as it runs (when a migration is planned).
    pub migration_job: Option<Job>,
    /// The TLS Secret the spec uses, when it does not exist.
    pub tls_secret_missing: Option<String>,
    /// Tator's API token, when buckets or job clusters are registered and its Secret has it.
    pub api_token: Option<String>,
}

/// CRDs seen installed, by `plural.group`, and when.
#[derive(Default)]
pub struct CrdsSeen(Mutex<HashMap<String, Instant>>);

impl CrdsSeen {
    async fn installed(
        &self,
        ctx: &Context,
        ns: &str,
        resource: &ApiResource,
    ) -> Result<bool, Error> {
        // The CRD watches know, unless they may not watch or have not listed yet.
        if let Some(installed) = ctx.caches.crds.known(resource) {
            return Ok(installed);
        }
        let key = crate::cache::crd_name(resource);
        let fresh = |seen: &HashMap<String, Instant>| {
            seen.get(&key).is_some_and(|at| at.elapsed() < CRD_SEEN_FOR)
        };
        if self.0.lock().is_ok_and(|seen| fresh(&seen)) {
            return Ok(true);
        }
        let installed = apply::crd_installed(&ctx.client, ns, resource).await?;
        if let Ok(mut seen) = self.0.lock() {
            if installed {
                seen.insert(key, Instant::now());
            } else {
                seen.remove(&key);
            }
        }
        Ok(installed)
    }
}

/// Reads what the reconcile of `t` needs. `removed_clusters` are the kubeconfig Secrets of job
/// clusters still being removed (they must consent too).
pub async fn fetch(
    ctx: &Context,
    td: &TatorDeployment,
    t: &ValidatedTator,
    removed_clusters: &[String],
) -> Result<Facts, Error> {
    let named = consent::named(t, removed_clusters);
    let (secrets, cluster, tls_secret_missing) = futures::try_join!(
        consent::fetch(&ctx.client, &t.namespace, named),
        cluster_facts(ctx, t),
        tls_secret_missing(ctx, t),
    )?;
    let mut facts = Facts {
        refused: if ctx.settings.secret_consent == consent::Mode::Required {
            secrets.refused(t).into_iter().cloned().collect()
        } else {
            Vec::new()
        },
        secrets_hash: crate::dependencies::secrets_hash(t, &secrets),
        cluster,
        tls_secret_missing,
        ..Facts::default()
    };
    if !facts.refused.is_empty() {
        return Ok(facts);
    }
    // The migrations Job's name follows from what the builders read, these facts included.
    let mut informed = t.clone();
    facts.fill_in(&mut informed);
    let (migration_job, api_token) =
        futures::join!(migration_job(ctx, &informed), api_token(ctx, td, t));
    facts.migration_job = migration_job?;
    facts.api_token = api_token;
    Ok(facts)
}

impl Facts {
    /// Sets what the builders read of these facts: the only fields of a [`ValidatedTator`]
    /// set after validation.
    pub fn fill_in(&self, t: &mut ValidatedTator) {
        t.secrets_hash = self.secrets_hash.clone();
        t.cluster = self.cluster.clone();
    }
}

/// What the builders need to know about the cluster; each read only when the spec needs it.
async fn cluster_facts(ctx: &Context, t: &ValidatedTator) -> Result<ClusterFacts, Error> {
    let ns = t.namespace.as_str();
    let crd =
        |resource: ApiResource| async move { ctx.crds_seen.installed(ctx, ns, &resource).await };
    let pod_security = async {
        if builders::features::filebeat_wanted(t) {
            apply::pod_security_level(&ctx.client, ns).await
        } else {
            Ok(None)
        }
    };
    let prometheus_operator = async {
        if builders::features::monitoring_enabled(t) {
            let (services, pods) = futures::try_join!(
                crd(builders::monitoring::service_monitor_resource()),
                crd(builders::monitoring::pod_monitor_resource()),
            )?;
            Ok(services && pods)
        } else {
            Ok(false)
        }
    };
    let autoscaled = !builders::queue_workers::all(t).is_empty();
    let keda = async {
        if autoscaled {
            crd(builders::queue_workers::scaled_object_resource()).await
        } else {
            Ok(false)
        }
    };
    let local_workflows = builders::workflows::LocalWorkflows::of(t);
    // Tator's WORKFLOW_STORAGE_CLASSES falls back to the cluster's default class.
    let default_storage_class = async {
        if local_workflows.algorithms
            && t.spec.workflows.storage_classes.is_empty()
            && t.spec.workflows.transcode.scratch_storage_class.is_none()
        {
            ctx.default_class.get(ctx).await
        } else {
            Ok(None)
        }
    };
    let argo = async {
        if local_workflows.any() {
            crd(builders::workflows::workflow_template_resource()).await
        } else {
            Ok(false)
        }
    };
    let (pod_security, prometheus_operator, keda, default_storage_class, argo) = futures::try_join!(
        pod_security,
        prometheus_operator,
        keda,
        default_storage_class,
        argo
    )?;
    Ok(ClusterFacts {
        prometheus_operator,
        pod_security,
        argo,
        default_storage_class,
        keda,
        operator_namespace: autoscaled
            .then(|| ctx.settings.operator_namespace.clone())
            .flatten(),
    })
}

/// The migrations Job of the requested release: from the Job watch, else read (before the
/// watch has seen it).
async fn migration_job(ctx: &Context, t: &ValidatedTator) -> Result<Option<Job>, Error> {
    let VersionPlan::Migrate { to, .. } = t.plan() else {
        return Ok(None);
    };
    let name = builders::migrations::job(t, &to.to_string()).name_any();
    let watched = ObjectRef::<Job>::new(&name).within(&t.namespace);
    if let Some(job) = ctx.caches.jobs.get(&watched) {
        return Ok(Some((*job).clone()));
    }
    apply::get_job(&ctx.client, &t.namespace, &name).await
}

async fn tls_secret_missing(ctx: &Context, t: &ValidatedTator) -> Result<Option<String>, Error> {
    match builders::features::tls_secret_name(t) {
        Some(secret) if !apply::secret_exists(&ctx.client, &t.namespace, &secret).await? => {
            Ok(Some(secret))
        }
        _ => Ok(None),
    }
}

/// Tator's API token, read only when something is (or was) registered through the REST API.
async fn api_token(ctx: &Context, td: &TatorDeployment, t: &ValidatedTator) -> Option<String> {
    let algorithm_clusters = t
        .spec
        .job_clusters
        .iter()
        .any(|c| c.runs.contains(&JobKind::Algorithms))
        || td
            .status
            .as_ref()
            .is_some_and(|s| s.job_clusters.iter().any(|c| c.registered_id.is_some()));
    let registrations = td.status.as_ref().is_some_and(|s| !s.buckets.is_empty());
    let a = t.spec.api_access.as_ref()?;
    if t.spec.buckets.is_empty() && !registrations && !algorithm_clusters {
        return None;
    }
    checks::secret_value(
        &ctx.client,
        &t.namespace,
        &a.token_secret.name,
        &a.token_secret.key,
    )
    .await
    .ok()
}
