//! Apply: one server-side-apply path under a fixed field manager, in a fixed order, then deletion
//! of orphans (children carrying our labels and owner reference that were not applied this round).

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{Deployment, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, Secret, Service},
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::info;

use crate::{
    build::{Children, common::instance_selector, data, storage, tls},
    cache::{self, Cached, Caches},
    error::Error,
    validate::ValidatedTator,
};

/// The one field manager the operator writes with.
pub const FIELD_MANAGER: &str = "tator-operator";

/// The live objects the API server returned for everything applied this round. Only these feed
/// the status.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub live: Children,
    /// cert-manager's Certificate CRD is not installed (a Certificate was wanted).
    pub cert_manager_missing: bool,
}

impl Applied {
    /// Adds what a later apply of the same round returned.
    pub fn extend(&mut self, other: Applied) {
        self.live.extend(other.live);
        self.cert_manager_missing |= other.cert_manager_missing;
    }
}

impl std::ops::Deref for Applied {
    type Target = Children;
    fn deref(&self) -> &Children {
        &self.live
    }
}

trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + k8s_openapi::Resource
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
{
}
impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
{
}

async fn apply_all<K: Child + Cached>(
    client: &Client,
    ns: &str,
    objs: Vec<K>,
    caches: Option<&Caches>,
) -> Result<Vec<K>, Error> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    // Objects of one kind do not depend on each other: send them at once.
    let sends = objs.into_iter().map(|obj| {
        let (api, params) = (&api, &params);
        async move {
            let name = obj.name_any();
            // Nothing to send when the watched copy already has it: a no-op reconcile writes
            // nothing.
            if let Some(live) = cache::live::<K>(caches, ns, &name)
                && cache::unchanged(&obj, &live)
            {
                return Ok(live);
            }
            api.patch(&name, params, &Patch::Apply(&obj))
                .await
                .map_err(|source| Error::Apply {
                    kind: <K as k8s_openapi::Resource>::KIND,
                    name,
                    source,
                })
        }
    });
    futures::future::try_join_all(sends).await
}

fn held<K: Child + Cached>(
    ns: &str,
    objs: Vec<K>,
    caches: Option<&Caches>,
    pending: &mut Vec<String>,
) -> Vec<K> {
    let mut out = Vec::new();
    for obj in objs {
        let name = obj.name_any();
        let kind = <K as k8s_openapi::Resource>::KIND;
        match cache::live::<K>(caches, ns, &name) {
            Some(live) => {
                if !cache::unchanged(&obj, &live) {
                    pending.push(format!("{kind}/{name}"));
                }
                out.push(live);
            }
            None => pending.push(format!("{kind}/{name} (new)")),
        }
    }
    out
}

/// What apply would return, without applying (`spec.paused`): the watched copies of the desired
/// children, and the children that would change (`Kind/name`).
pub fn held_back(
    t: &ValidatedTator,
    desired: Children,
    caches: Option<&Caches>,
) -> (Applied, Vec<String>) {
    let Children {
        claims,
        config_maps,
        certificates: _,
        services,
        jobs,
        stateful_sets,
        deployments,
        autoscalers,
        disruption_budgets,
    } = desired;
    let ns = t.namespace.as_str();
    let mut pending = Vec::new();
    let live = Children {
        claims: held(ns, claims, caches, &mut pending),
        config_maps: held(ns, config_maps, caches, &mut pending),
        certificates: Vec::new(),
        services: held(ns, services, caches, &mut pending),
        jobs: held(ns, jobs, caches, &mut pending),
        stateful_sets: held(ns, stateful_sets, caches, &mut pending),
        deployments: held(ns, deployments, caches, &mut pending),
        autoscalers: held(ns, autoscalers, caches, &mut pending),
        disruption_budgets: held(ns, disruption_budgets, caches, &mut pending),
    };
    (
        Applied {
            live,
            cert_manager_missing: false,
        },
        pending,
    )
}

/// Applies every desired child in dependency order: claims, configuration, Services, Jobs,
/// workloads, then the objects that refer to workloads.
pub async fn apply(
    client: &Client,
    t: &ValidatedTator,
    desired: Children,
    caches: Option<&Caches>,
) -> Result<Applied, Error> {
    let Children {
        claims,
        config_maps,
        certificates,
        services,
        jobs,
        stateful_sets,
        deployments,
        autoscalers,
        disruption_budgets,
    } = desired;
    let ns = t.namespace.as_str();
    let claims = apply_all(client, ns, claims, caches).await?;
    let config_maps = apply_all(client, ns, config_maps, caches).await?;
    let (certificates, cert_manager_missing) = apply_certificates(client, ns, certificates).await?;
    let live = Children {
        claims,
        config_maps,
        certificates,
        services: apply_all(client, ns, services, caches).await?,
        jobs: apply_all(client, ns, jobs, caches).await?,
        stateful_sets: apply_all(client, ns, stateful_sets, caches).await?,
        deployments: apply_all(client, ns, deployments, caches).await?,
        autoscalers: apply_all(client, ns, autoscalers, caches).await?,
        disruption_budgets: apply_all(client, ns, disruption_budgets, caches).await?,
    };
    Ok(Applied {
        live,
        cert_manager_missing,
    })
}

/// Applies cert-manager Certificates; a missing CRD is reported, not an error.
async fn apply_certificates(
    client: &Client,
    ns: &str,
    certs: Vec<DynamicObject>,
) -> Result<(Vec<DynamicObject>, bool), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &tls::certificate_resource());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut out = Vec::new();
    for cert in certs {
        let name = cert.name_any();
        match api.patch(&name, &params, &Patch::Apply(&cert)).await {
            Ok(live) => out.push(live),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok((out, true)),
            Err(source) => {
                return Err(Error::Apply {
                    kind: "Certificate",
                    name,
                    source,
                });
            }
        }
    }
    Ok((out, false))
}

/// Whether an object's controller is this TatorDeployment.
fn controlled_by(meta: &kube::api::ObjectMeta, t: &ValidatedTator) -> bool {
    meta.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.uid == t.owner.uid && r.controller == Some(true))
    })
}

fn names<K: Resource>(objs: &[K]) -> BTreeSet<String> {
    objs.iter().map(|o| o.name_any()).collect()
}

async fn prune_kind<K: Child + Cached>(
    client: &Client,
    t: &ValidatedTator,
    keep: BTreeSet<String>,
    caches: Option<&Caches>,
) -> Result<u32, Error> {
    let api: Api<K> = Api::namespaced(client.clone(), &t.namespace);
    // From the watched copies when there are any (the watch covers every managed child), else
    // a list.
    let metas: Vec<kube::api::ObjectMeta> = match cache::synced::<K>(caches) {
        Some(store) => store
            .state()
            .iter()
            .filter(|o| {
                o.meta().namespace.as_deref() == Some(t.namespace.as_str())
                    && o.labels().get(tator_api::labels::INSTANCE) == Some(&t.name)
            })
            .map(|o| o.meta().clone())
            .collect(),
        None => api
            .list_metadata(&ListParams::default().labels(&instance_selector(&t.name)))
            .await
            .map_err(|source| Error::Fetch {
                what: format!("{} children", <K as k8s_openapi::Resource>::KIND),
                source,
            })?
            .items
            .into_iter()
            .map(|o| o.metadata)
            .collect(),
    };
    let mut deleted = 0;
    for metadata in metas {
        let name = metadata.name.clone().unwrap_or_default();
        let ours = controlled_by(&metadata, t);
        if keep.contains(&name) || !ours || metadata.deletion_timestamp.is_some() {
            continue;
        }
        info!(kind = <K as k8s_openapi::Resource>::KIND, name = %name, "deleting orphaned child");
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::Prune {
                    kind: <K as k8s_openapi::Resource>::KIND,
                    name,
                    source,
                });
            }
        }
    }
    Ok(deleted)
}

/// Certificates are pruned like the other children, when cert-manager's CRD exists.
async fn prune_certificates(
    client: &Client,
    t: &ValidatedTator,
    keep: BTreeSet<String>,
) -> Result<u32, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &t.namespace, &tls::certificate_resource());
    let list = match api
        .list_metadata(&ListParams::default().labels(&instance_selector(&t.name)))
        .await
    {
        Ok(list) => list,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(0),
        Err(source) => {
            return Err(Error::Fetch {
                what: "Certificate children".into(),
                source,
            });
        }
    };
    let mut deleted = 0;
    for obj in list.items {
        let name = obj.name_any();
        let ours = controlled_by(&obj.metadata, t);
        if keep.contains(&name) || !ours {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::Prune {
                    kind: "Certificate",
                    name,
                    source,
                });
            }
        }
    }
    Ok(deleted)
}

/// Deletes children that carry this TatorDeployment's labels and controller reference but were
/// not applied this round. Claims and Secrets hold data and are never pruned.
pub async fn prune(
    client: &Client,
    t: &ValidatedTator,
    applied: &Applied,
    caches: Option<&Caches>,
) -> Result<u32, Error> {
    let Children {
        claims: _,
        config_maps,
        certificates,
        services,
        jobs,
        stateful_sets,
        deployments,
        autoscalers,
        disruption_budgets,
    } = &applied.live;
    let mut n = 0;
    n += prune_kind::<ConfigMap>(client, t, names(config_maps), caches).await?;
    n += prune_kind::<Service>(client, t, names(services), caches).await?;
    n += prune_kind::<Job>(client, t, names(jobs), caches).await?;
    n += prune_kind::<StatefulSet>(client, t, names(stateful_sets), caches).await?;
    n += prune_kind::<Deployment>(client, t, names(deployments), caches).await?;
    n += prune_kind::<HorizontalPodAutoscaler>(client, t, names(autoscalers), caches).await?;
    n += prune_kind::<PodDisruptionBudget>(client, t, names(disruption_budgets), caches).await?;
    n += prune_certificates(client, t, names(certificates)).await?;
    Ok(n)
}

/// Creates each generated Secret (the Django key, in-cluster database and cache credentials) if it
/// does not exist. An existing one is never rewritten: only its labels and owner references
/// follow the spec (the deletion policy decides whether it is owned).
pub async fn ensure_generated_secrets(client: &Client, t: &ValidatedTator) -> Result<(), Error> {
    use rand::{Rng, distr::Alphanumeric};
    let api: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
    for g in data::generated_secrets(t) {
        let meta = data::data_meta(t, g.name.clone(), g.component);
        let existing = api
            .get_metadata_opt(&g.name)
            .await
            .map_err(|source| Error::Fetch {
                what: format!("Secret {}", g.name),
                source,
            })?;
        if let Some(existing) = existing {
            let owners = existing
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            let wanted = meta.owner_references.clone().unwrap_or_default();
            let labels_ok = meta.labels.as_ref().is_none_or(|l| {
                l.iter().all(|(k, v)| {
                    existing.metadata.labels.as_ref().and_then(|x| x.get(k)) == Some(v)
                })
            });
            if owners != wanted || !labels_ok {
                // Metadata only (a merge patch replaces the owner list): the data is left as it is.
                let body = serde_json::json!({
                    "metadata": {"labels": meta.labels, "ownerReferences": wanted},
                });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                api.patch(&g.name, &params, &Patch::Merge(&body))
                    .await
                    .map_err(|source| Error::Apply {
                        kind: "Secret",
                        name: g.name.clone(),
                        source,
                    })?;
            }
            continue;
        }
        let mut values = g.fixed.clone();
        for (key, len) in &g.random {
            let value: String = rand::rng()
                .sample_iter(&Alphanumeric)
                .take(*len)
                .map(char::from)
                .collect();
            values.insert(key.clone(), value);
        }
        let secret = storage::generated_secret(meta, values);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&params, &secret).await {
            Ok(_) => info!(secret = %g.name, "generated a Secret"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(Error::Apply {
                    kind: "Secret",
                    name: g.name.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Whether a Secret exists (metadata only: its data is never read).
pub async fn secret_exists(client: &Client, ns: &str, name: &str) -> Result<bool, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.get_metadata_opt(name)
        .await
        .map(|m| m.is_some())
        .map_err(|source| Error::Fetch {
            what: format!("Secret {name}"),
            source,
        })
}

/// The migrations Job by name, if it exists.
pub async fn get_job(client: &Client, ns: &str, name: &str) -> Result<Option<Job>, Error> {
    Api::<Job>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Fetch {
            what: format!("Job {name}"),
            source,
        })
}
