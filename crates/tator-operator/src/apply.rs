//! Apply: one server-side-apply path under a fixed field manager, in a fixed order, then deletion
//! of orphans (children carrying our labels and owner reference that were not applied this round).

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{batch::v1::Job, core::v1::Secret},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::info;

use crate::{
    builders::{
        children::{Children, child_kinds},
        common::{data_meta, instance_selector},
        data, monitoring, storage,
    },
    cache::{self, Cached, Caches, Seen},
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
    /// prometheus-operator's CRDs went missing while a ServiceMonitor or PodMonitor was applied.
    pub prometheus_operator_missing: bool,
    /// Argo's WorkflowTemplate CRD went missing while templates were applied.
    pub argo_missing: bool,
}

impl Applied {
    /// Adds what a later apply of the same round returned.
    pub fn extend(&mut self, other: Applied) {
        self.live.extend(other.live);
        self.cert_manager_missing |= other.cert_manager_missing;
        self.prometheus_operator_missing |= other.prometheus_operator_missing;
        self.argo_missing |= other.argo_missing;
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
            let kind = <K as k8s_openapi::Resource>::KIND;
            // Nothing to send when the watched copy already has it: a no-op reconcile writes
            // nothing.
            match K::seen(caches, ns, &obj) {
                Seen::Same(live) => return Ok(trimmed(live)),
                Seen::Differs(_) | Seen::Missing => {}
                // Not kept whole, and its generation is not the one remembered (someone changed
                // its spec, or the operator just started): one read instead of a write.
                Seen::Unknown(_) => {
                    let live = api.get_opt(&name).await.map_err(|source| Error::Fetch {
                        what: format!("{kind} {name}"),
                        source,
                    })?;
                    if let Some(live) = live.filter(|l| cache::unchanged(&obj, l)) {
                        K::remember(caches, &live);
                        return Ok(trimmed(live));
                    }
                }
            }
            let live = api
                .patch(&name, params, &Patch::Apply(&obj))
                .await
                .map_err(|source| Error::Apply { kind, name, source })?;
            K::remember(caches, &live);
            Ok(trimmed(live))
        }
    });
    futures::future::try_join_all(sends).await
}

/// A live object as the reconcile keeps it until its status is written: what the status reads,
/// without what no copy keeps (`Cached::trim`). A hundred installations' reconciles held their
/// children's managed fields and pod templates, several times what the watches keep.
fn trimmed<K: Cached>(mut live: K) -> K {
    live.trim();
    live
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
        match K::seen(caches, ns, &obj) {
            Seen::Same(live) => out.push(trimmed(live)),
            Seen::Differs(Some(live)) => {
                pending.push(format!("{kind}/{name}"));
                out.push(trimmed(live));
            }
            Seen::Differs(None) => pending.push(format!("{kind}/{name}")),
            Seen::Missing => pending.push(format!("{kind}/{name} (new)")),
            // Nothing is read while paused: a child not kept whole that carries the hash of
            // what would be sent is taken as unchanged.
            Seen::Unknown(live) => out.push(trimmed(live.unwrap_or(obj))),
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
    let ns = t.namespace.as_str();
    let mut pending = Vec::new();
    // Watched kinds are held by what the watch says; a Secret is never read while paused (so
    // nothing of it is pending), and third-party kinds are not watched.
    macro_rules! hold {
        ([] $( $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident $(($($arg:tt)*))? ; )*) => {
            Children {
                $( $field: hold!(@one $how, desired.$field), )*
            }
        };
        (@one composed, $objs:expr) => { Vec::new() };
        (@one crd, $objs:expr) => { Vec::new() };
        (@one $how:ident, $objs:expr) => { held(ns, $objs, caches, &mut pending) };
    }
    let live = child_kinds!(hold);
    (
        Applied {
            live,
            cert_manager_missing: false,
            prometheus_operator_missing: false,
            argo_missing: false,
        },
        pending,
    )
}

/// Applies every desired child in dependency order: claims, configuration, Services, Jobs and
/// CronJobs, workloads, then the objects that refer to workloads.
pub async fn apply(
    client: &Client,
    t: &ValidatedTator,
    desired: Children,
    caches: Option<&Caches>,
) -> Result<Applied, Error> {
    let ns = t.namespace.as_str();
    // Kinds of third-party CRDs found missing.
    let mut missing: Vec<&'static str> = Vec::new();
    // One kind after the other, in the table's order (struct fields are evaluated in order).
    macro_rules! send {
        ([] $( $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident $(($($arg:tt)*))? ; )*) => {
            Children {
                $( $field: send!(@one $how $(($($arg)*))?, desired.$field), )*
            }
        };
        // The pods of this tier mount them; their values are not kept in what was applied.
        (@one composed, $objs:expr) => {{
            apply_all(client, ns, $objs, caches).await?;
            Vec::new()
        }};
        (@one crd($resource:path, $kind:literal), $objs:expr) => {{
            let (live, absent) = apply_dynamic(client, ns, &$resource(), $kind, $objs).await?;
            if absent {
                missing.push($kind);
            }
            live
        }};
        (@one $how:ident, $objs:expr) => { apply_all(client, ns, $objs, caches).await? };
    }
    let live = child_kinds!(send);
    let absent = |kind: &str| missing.contains(&kind);
    Ok(Applied {
        live,
        cert_manager_missing: absent("Certificate"),
        prometheus_operator_missing: absent("ServiceMonitor") || absent("PodMonitor"),
        argo_missing: absent("WorkflowTemplate"),
    })
}

/// Applies objects of a third-party CRD (cert-manager's Certificate, prometheus-operator's
/// monitors); a missing CRD is reported (`true`), not an error.
async fn apply_dynamic(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    kind: &'static str,
    objs: Vec<DynamicObject>,
) -> Result<(Vec<DynamicObject>, bool), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut out = Vec::new();
    for obj in objs {
        let name = obj.name_any();
        // These kinds are not watched: read the live copy, and send nothing when it already has
        // everything (a no-op reconcile writes nothing).
        match api.get_opt(&name).await {
            Ok(Some(mut live)) if cache::unchanged(&obj, &live) => {
                live.metadata.managed_fields = None;
                out.push(live);
                continue;
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok((out, true)),
            Err(source) => {
                return Err(Error::Fetch {
                    what: format!("{kind} {name}"),
                    source,
                });
            }
        }
        match api.patch(&name, &params, &Patch::Apply(&obj)).await {
            Ok(mut live) => {
                live.metadata.managed_fields = None;
                out.push(live);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok((out, true)),
            Err(source) => return Err(Error::Apply { kind, name, source }),
        }
    }
    Ok((out, false))
}

/// Whether objects of a third-party CRD can be listed in the namespace (its CRD is installed).
pub async fn crd_installed(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
) -> Result<bool, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(Error::Fetch {
            what: format!("{} (is its CRD installed?)", resource.plural),
            source,
        }),
    }
}

/// The `pod-security.kubernetes.io/enforce` level of a namespace; None when it has none or the
/// operator may not read namespaces (a namespace-scoped installation).
pub async fn pod_security_level(client: &Client, ns: &str) -> Result<Option<String>, Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match api.get_metadata_opt(ns).await {
        Ok(meta) => Ok(meta.and_then(|m| {
            m.metadata
                .labels
                .and_then(|l| l.get("pod-security.kubernetes.io/enforce").cloned())
        })),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        Err(source) => Err(Error::Fetch {
            what: format!("namespace {ns}"),
            source,
        }),
    }
}

/// Name of the cluster's default StorageClass (annotation
/// `storageclass.kubernetes.io/is-default-class: "true"`); None when there is none or the
/// operator may not list StorageClasses (a namespace-scoped installation).
pub async fn default_storage_class(client: &Client) -> Result<Option<String>, Error> {
    let api: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => Ok(list
            .items
            .into_iter()
            .filter(|sc| {
                sc.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                    .is_some_and(|v| v == "true")
            })
            .filter_map(|sc| sc.metadata.name)
            .min()),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        Err(source) => Err(Error::Fetch {
            what: "storage classes".into(),
            source,
        }),
    }
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

/// Deletes the children of kind `K` that this TatorDeployment controls and that are neither in
/// `keep` nor refused by `prunable`.
async fn prune_kind_where<K: Child + Cached>(
    client: &Client,
    t: &ValidatedTator,
    keep: BTreeSet<String>,
    caches: Option<&Caches>,
    prunable: impl Fn(&kube::api::ObjectMeta) -> bool,
) -> Result<u32, Error> {
    let api: Api<K> = Api::namespaced(client.clone(), &t.namespace);
    // From the watched copies when there are any (the watch covers every managed child), else
    // a list.
    let metas: Vec<kube::api::ObjectMeta> = match K::metas(caches, &t.namespace, &t.name) {
        Some(metas) => metas,
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
        let ours = controlled_by(&metadata, t) && prunable(&metadata);
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

/// Objects of third-party CRDs are pruned like the other children, when the CRD exists.
async fn prune_dynamic(
    client: &Client,
    t: &ValidatedTator,
    resource: ApiResource,
    kind: &'static str,
    keep: BTreeSet<String>,
    caches: Option<&Caches>,
) -> Result<u32, Error> {
    // Without its CRD there is nothing of this kind: no list.
    if caches.and_then(|c| c.crds.known(&resource)) == Some(false) {
        return Ok(0);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &t.namespace, &resource);
    let list = match api
        .list_metadata(&ListParams::default().labels(&instance_selector(&t.name)))
        .await
    {
        Ok(list) => list,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(0),
        Err(source) => {
            return Err(Error::Fetch {
                what: format!("{kind} children"),
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
                return Err(Error::Prune { kind, name, source });
            }
        }
    }
    Ok(deleted)
}

/// Deletes children that carry this TatorDeployment's labels and controller reference but were
/// not applied this round. Claims and Secrets hold data and are never pruned, except the claim
/// of the operator's own Prometheus (metrics only), which goes when that Prometheus does.
pub async fn prune(
    client: &Client,
    t: &ValidatedTator,
    applied: &Applied,
    caches: Option<&Caches>,
    spare: &[&str],
) -> Result<u32, Error> {
    // Children of the spared components (their `tator.io/component` label) stay this round.
    let spared = |m: &kube::api::ObjectMeta| {
        m.labels
            .as_ref()
            .and_then(|l| l.get(tator_api::labels::COMPONENT))
            .is_some_and(|c| spare.contains(&c.as_str()))
    };
    // Claims hold data: only the claim of the operator's own Prometheus is pruned.
    let prunable = |kind: &str, m: &kube::api::ObjectMeta| {
        !spared(m)
            && (kind != "PersistentVolumeClaim"
                || m.labels
                    .as_ref()
                    .and_then(|l| l.get(tator_api::labels::COMPONENT))
                    .is_some_and(|c| c == monitoring::PROMETHEUS))
    };
    let live = &applied.live;
    type Pruning<'a> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, Error>> + Send + 'a>>;
    // One pruning per kind, run in the reverse of apply order: what uses an object goes first.
    macro_rules! prunings {
        ([] $( $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident $(($($arg:tt)*))? ; )*) => {{
            let mut all: Vec<Pruning<'_>> = Vec::new();
            $( prunings!(@one all, $how $(($($arg)*))?, $ty, live.$field); )*
            all
        }};
        // Never pruned: the operator may not list Secrets, and the composed ones have fixed
        // names per installation and go with it (owner references).
        (@one $all:ident, composed, $ty:ty, $objs:expr) => {};
        (@one $all:ident, crd($resource:path, $kind:literal), $ty:ty, $objs:expr) => {
            $all.push(Box::pin(prune_dynamic(client, t, $resource(), $kind, names(&$objs), caches)));
        };
        (@one $all:ident, $how:ident, $ty:ty, $objs:expr) => {
            $all.push(Box::pin(prune_kind_where::<$ty>(client, t, names(&$objs), caches, move |m| {
                prunable(<$ty as k8s_openapi::Resource>::KIND, m)
            })));
        };
    }
    let mut n = 0;
    for pruning in child_kinds!(prunings).into_iter().rev() {
        n += pruning.await?;
    }
    Ok(n)
}

/// Creates each generated Secret (the Django key, in-cluster database and cache credentials) if it
/// does not exist. An existing one is never rewritten: only its labels and owner references
/// follow the spec (the deletion policy decides whether it is owned).
pub async fn ensure_generated_secrets(
    client: &Client,
    t: &ValidatedTator,
    caches: Option<&Caches>,
) -> Result<(), Error> {
    use rand::{Rng, distr::Alphanumeric};
    let api: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
    let recent = caches.map(|c| &c.recent_secrets);
    for g in data::generated_secrets(t) {
        let meta = data_meta(t, g.name.clone(), g.component);
        // Checked lately with these owners and labels: not read again (`cache::RecentSecrets`).
        let mark = serde_json::to_vec(&(&meta.owner_references, &meta.labels))
            .map(|b| crate::builders::common::short_hash(&b, 16))
            .unwrap_or_default();
        if recent.is_some_and(|r| r.fresh(&t.namespace, &g.name, &mark)) {
            continue;
        }
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
            if let Some(r) = recent {
                r.record(&t.namespace, &g.name, &mark);
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
            Ok(_) => {
                info!(secret = %g.name, "generated a Secret");
                if let Some(r) = recent {
                    r.record(&t.namespace, &g.name, &mark);
                }
            }
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
