//! Local copies of the children, filled by the controller's own watches (the same watches that
//! trigger reconciles), so that a reconcile that would change nothing sends nothing: apply skips
//! a child whose live copy already has what the operator would send, and prune lists from here.
//!
//! Most kinds are kept whole and compared field by field. The largest children are not:
//!
//! - CronJobs (16 per installation, each with Tator's whole environment) are kept as metadata
//!   only;
//! - Deployments and StatefulSets are kept as their metadata, replicas and status (what the
//!   TatorDeployment's status reads), without their pod template, selector or claim templates.
//!
//! Such a child is unchanged when its metadata still has what the operator sends and its
//! `generation` (which the API server raises on every spec change, by anyone) is the one the
//! operator's own last apply or read returned, remembered in [`Generations`]. When the generation
//! moved, or nothing is remembered (the operator just started), one read of the whole object
//! decides, so an edit by someone else of fields the operator does not set costs a read, not a
//! write.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{
    apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec},
    batch::v1::CronJob,
    core::v1::Secret,
};
use kube::{
    Resource,
    api::{ObjectMeta, PartialObjectMeta},
    discovery::ApiResource,
    runtime::reflector::{self, ObjectRef, Store, store::Writer},
};
use serde::Serialize;
use serde_json::Value;
use tator_api::labels::INSTANCE;

use crate::{
    builders::children::{APPLIED_HASH_ANNOTATION, child_kinds},
    workload::PROGRESS_DEADLINE_EXCEEDED,
};

/// The CRD's name: `<plural>.<group>`.
pub fn crd_name(resource: &ApiResource) -> String {
    format!("{}.{}", resource.plural, resource.group)
}

/// Which third-party CRDs are installed and established, by CRD name, as the operator's CRD
/// watches (`controller::crds`) know it; a name without an answer is not known.
#[derive(Clone, Default)]
pub struct CrdPresence(Arc<Mutex<HashMap<String, bool>>>);

impl CrdPresence {
    /// Whether the CRD of `resource` is installed, when a watch knows.
    pub fn known(&self, resource: &ApiResource) -> Option<bool> {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(&crd_name(resource)).copied())
    }

    /// Records what a watch learnt (None: it no longer knows).
    pub(crate) fn set(&self, name: &str, installed: Option<bool>) {
        if let Ok(mut m) = self.0.lock() {
            match installed {
                Some(v) => m.insert(name.to_string(), v),
                None => m.remove(name),
            };
        }
    }
}

/// Generates [`Caches`] and [`CacheWriters`] from the table of child kinds: one store per watched
/// kind (`whole`, `labelled` and `slim` kinds keep objects, `meta` kinds their metadata).
macro_rules! define_caches {
    (@done $( $field:ident : $kept:ty, )*) => {
        /// Readers of the child caches.
        #[derive(Clone)]
        pub struct Caches {
            $( pub $field: Store<$kept>, )*
            /// The generations of the children not kept whole, as the operator last applied or
            /// read them.
            pub generations: Generations,
            /// Which third-party CRDs are installed.
            pub crds: CrdPresence,
            /// Secrets the operator applied or checked lately.
            pub recent_secrets: RecentSecrets,
        }

        /// Writers of the child caches, handed to the watches.
        pub struct CacheWriters {
            $( pub $field: Writer<$kept>, )*
        }

        impl Caches {
            /// Empty caches and their writers.
            pub fn new() -> (Self, CacheWriters) {
                $( let $field = reflector::store(); )*
                (
                    Self {
                        $( $field: $field.0, )*
                        generations: Generations::default(),
                        crds: CrdPresence::default(),
                        recent_secrets: RecentSecrets::default(),
                    },
                    CacheWriters { $( $field: $field.1, )* },
                )
            }
        }
    };
    (@sort [$($acc:tt)*]) => { define_caches!(@done $($acc)*); };
    (@sort [$($acc:tt)*] $(#[$doc:meta])* $field:ident : $ty:ty => composed ; $($rest:tt)*) => {
        define_caches!(@sort [$($acc)*] $($rest)*);
    };
    (@sort [$($acc:tt)*] $(#[$doc:meta])* $field:ident : $ty:ty => crd($($arg:tt)*) ; $($rest:tt)*) => {
        define_caches!(@sort [$($acc)*] $($rest)*);
    };
    (@sort [$($acc:tt)*] $(#[$doc:meta])* $field:ident : $ty:ty => meta ; $($rest:tt)*) => {
        define_caches!(@sort [$($acc)* $field : PartialObjectMeta<$ty>,] $($rest)*);
    };
    (@sort [$($acc:tt)*] $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident ; $($rest:tt)*) => {
        define_caches!(@sort [$($acc)* $field : $ty,] $($rest)*);
    };
    ([] $($table:tt)*) => { define_caches!(@sort [] $($table)*); };
}
child_kinds!(define_caches);

/// The generation and applied hash a child had when the operator last applied or read it
/// whole, for the kinds not kept whole. Keyed by kind, namespace and name; the UID tells a
/// recreated object from the one remembered.
#[derive(Clone, Default)]
pub struct Generations(Arc<Mutex<HashMap<Key, Remembered>>>);

type Key = (&'static str, String, String);

#[derive(Clone, Debug, PartialEq)]
struct Remembered {
    uid: String,
    generation: i64,
    hash: String,
}

impl Generations {
    fn key(kind: &'static str, meta: &ObjectMeta) -> Key {
        (
            kind,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }

    fn remembered(meta: &ObjectMeta) -> Option<Remembered> {
        Some(Remembered {
            uid: meta.uid.clone()?,
            generation: meta.generation?,
            hash: applied_hash_of(meta)?.clone(),
        })
    }

    /// Remembers a live copy the operator applied or read whole.
    pub fn remember(&self, kind: &'static str, live: &ObjectMeta) {
        if let (Some(r), Ok(mut map)) = (Self::remembered(live), self.0.lock()) {
            map.insert(Self::key(kind, live), r);
        }
    }

    /// Forgets a deleted child.
    pub fn forget(&self, kind: &'static str, meta: &ObjectMeta) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&Self::key(kind, meta));
        }
    }

    /// Whether the watched metadata is of the very object remembered, at the remembered
    /// generation and hash.
    fn matches(&self, kind: &'static str, live: &ObjectMeta) -> bool {
        let Ok(map) = self.0.lock() else {
            return false;
        };
        map.get(&Self::key(kind, live))
            .is_some_and(|had| Self::remembered(live).as_ref() == Some(had))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.lock().map(|m| m.is_empty()).unwrap_or_default()
    }
}

/// What the watch says of a desired child.
#[derive(Debug)]
pub enum Seen<K> {
    /// Applying it would change nothing: the watched copy (for CronJobs, watched as metadata
    /// only, the desired object, which the live one has).
    Same(K),
    /// It has to be applied; the live copy when the watch has one whole.
    Differs(Option<K>),
    /// The watch has not seen it (or there is no watch): it has to be created.
    Missing,
    /// The watch cannot tell (a child not kept whole whose generation is not the remembered
    /// one): read the object to know. The watched copy, when there is one.
    Unknown(Option<K>),
}

/// How the controller's watch keeps one kind.
pub trait Cached: Resource<DynamicType = ()> + Clone + Serialize + Sized + 'static {
    /// Compares a desired child with the watched copy.
    fn seen(caches: Option<&Caches>, ns: &str, desired: &Self) -> Seen<Self>;

    /// Records a live copy the operator applied or read whole.
    fn remember(_caches: Option<&Caches>, _live: &Self) {}

    /// Drops what no copy keeps: the managed fields, and for the kinds not kept whole what
    /// [`Slim`] drops. The watch trims the copies it keeps with it, and apply the live objects a
    /// reconcile holds until its status is written.
    fn trim(&mut self) {
        self.meta_mut().managed_fields = None;
    }

    /// The metadata of the watched children of this kind of one installation, once the watch has
    /// listed them all (None before, and for kinds without a watch).
    fn metas(caches: Option<&Caches>, ns: &str, instance: &str) -> Option<Vec<ObjectMeta>>;
}

/// The store of one watch, once it has listed everything.
fn ready<K: Resource + Clone + 'static>(store: &Store<K>) -> Option<&Store<K>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
        .then_some(store)
}

fn metas_of<K: Resource + Clone + 'static>(
    store: &Store<K>,
    ns: &str,
    instance: &str,
) -> Option<Vec<ObjectMeta>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let of_instance = |m: &ObjectMeta| {
        m.namespace.as_deref() == Some(ns)
            && m.labels
                .as_ref()
                .and_then(|l| l.get(INSTANCE))
                .map(String::as_str)
                == Some(instance)
    };
    Some(
        ready(store)?
            .state()
            .iter()
            .map(|o| o.meta())
            .filter(|m| of_instance(m))
            .cloned()
            .collect(),
    )
}

/// Kinds kept whole, compared field by field.
macro_rules! cached {
    ($kind:ty, $field:ident) => {
        impl Cached for $kind {
            fn seen(caches: Option<&Caches>, ns: &str, desired: &Self) -> Seen<Self> {
                let name = desired.meta().name.clone().unwrap_or_default();
                let live = caches.and_then(|c| c.$field.get(&ObjectRef::new(&name).within(ns)));
                match live {
                    Some(live) if unchanged(desired, &live) => Seen::Same((*live).clone()),
                    Some(live) => Seen::Differs(Some((*live).clone())),
                    None => Seen::Missing,
                }
            }

            fn metas(caches: Option<&Caches>, ns: &str, instance: &str) -> Option<Vec<ObjectMeta>> {
                metas_of(&caches?.$field, ns, instance)
            }
        }
    };
}

/// How long a Secret the operator wrote or read is taken as it left it. Secrets are not watched
/// (watching them would take the right to list every Secret of the namespace), so an edit by
/// hand is only seen at a reconcile some other change starts; within this time of the operator's
/// own write or read, not even then.
pub const SECRET_TRUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Secrets the operator applied or checked lately: by namespace and name, the applied-hash (or
/// the owner it verified) and when. Never their values.
#[derive(Clone, Default)]
pub struct RecentSecrets(Arc<Mutex<HashMap<SecretKey, (String, std::time::Instant)>>>);

/// Namespace and name of a Secret.
type SecretKey = (String, String);

impl RecentSecrets {
    /// Whether `ns/name` was recorded with `mark` within [`SECRET_TRUSTED_FOR`].
    pub fn fresh(&self, ns: &str, name: &str, mark: &str) -> bool {
        self.0.lock().is_ok_and(|m| {
            m.get(&(ns.to_string(), name.to_string()))
                .is_some_and(|(h, at)| h == mark && at.elapsed() < SECRET_TRUSTED_FOR)
        })
    }

    /// Records that `ns/name` is as the operator wants it, under `mark`.
    pub fn record(&self, ns: &str, name: &str, mark: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, (_, at)| at.elapsed() < SECRET_TRUSTED_FOR);
            m.insert(
                (ns.to_string(), name.to_string()),
                (mark.to_string(), std::time::Instant::now()),
            );
        }
    }
}

/// Secrets are not watched: one read tells whether a composed Secret must be sent, unless the
/// operator applied or read exactly this one lately ([`RecentSecrets`]).
impl Cached for Secret {
    fn seen(caches: Option<&Caches>, ns: &str, desired: &Self) -> Seen<Self> {
        let name = desired.metadata.name.as_deref().unwrap_or_default();
        match (caches, applied_hash_of(&desired.metadata)) {
            (Some(c), Some(hash)) if c.recent_secrets.fresh(ns, name, hash) => {
                Seen::Same(desired.clone())
            }
            _ => Seen::Unknown(None),
        }
    }

    fn remember(caches: Option<&Caches>, live: &Self) {
        if let (Some(c), Some(hash), Some(ns), Some(name)) = (
            caches,
            applied_hash_of(&live.metadata),
            live.metadata.namespace.as_deref(),
            live.metadata.name.as_deref(),
        ) {
            c.recent_secrets.record(ns, name, hash);
        }
    }

    fn metas(_caches: Option<&Caches>, _ns: &str, _instance: &str) -> Option<Vec<ObjectMeta>> {
        None
    }
}

/// Kinds not kept whole (see the module documentation): what stays is what the status reads.
pub trait Slim: Resource {
    /// Drops what the copies do not keep.
    fn slim(&mut self);
}

impl Slim for Deployment {
    fn slim(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            *spec = DeploymentSpec {
                replicas: spec.replicas,
                ..Default::default()
            };
        }
        // Of its conditions only a stalled rollout's is read (`Workload`).
        if let Some(conditions) = self.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            conditions.retain(|c| c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED));
        }
    }
}

impl Slim for StatefulSet {
    fn slim(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            *spec = StatefulSetSpec {
                replicas: spec.replicas,
                ..Default::default()
            };
        }
        if let Some(status) = self.status.as_mut() {
            status.conditions = None;
        }
    }
}

/// CronJobs are watched as metadata only; the live ones a reconcile holds keep no more.
impl Slim for CronJob {
    fn slim(&mut self) {
        self.spec = None;
    }
}

/// Kinds compared by metadata and remembered generation; `$copy` turns the watched copy into
/// what apply returns for it (None when the watch keeps metadata only).
macro_rules! by_generation {
    ($kind:ty, $field:ident, $copy:expr) => {
        impl Cached for $kind {
            fn seen(caches: Option<&Caches>, ns: &str, desired: &Self) -> Seen<Self> {
                let kind = <$kind as k8s_openapi::Resource>::KIND;
                let name = desired.meta().name.clone().unwrap_or_default();
                let Some(caches) = caches else {
                    return Seen::Missing;
                };
                let Some(live) = caches.$field.get(&ObjectRef::new(&name).within(ns)) else {
                    return Seen::Missing;
                };
                let copy: Option<Self> = $copy(&*live);
                if !metadata_unchanged(desired.meta(), live.meta()) {
                    Seen::Differs(copy)
                } else if caches.generations.matches(kind, live.meta()) {
                    Seen::Same(copy.unwrap_or_else(|| desired.clone()))
                } else {
                    Seen::Unknown(copy)
                }
            }

            fn remember(caches: Option<&Caches>, live: &Self) {
                if let Some(c) = caches {
                    c.generations
                        .remember(<$kind as k8s_openapi::Resource>::KIND, live.meta());
                }
            }

            fn trim(&mut self) {
                self.meta_mut().managed_fields = None;
                self.slim();
            }

            fn metas(caches: Option<&Caches>, ns: &str, instance: &str) -> Option<Vec<ObjectMeta>> {
                metas_of(&caches?.$field, ns, instance)
            }
        }
    };
}

/// One `Cached` implementation per watched kind of the table (Secrets have theirs above; the
/// third-party kinds are not watched).
macro_rules! impl_cached {
    ([] $( $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident $(($($arg:tt)*))? ; )*) => {
        $( impl_cached!(@one $how, $ty, $field); )*
    };
    (@one composed, $ty:ty, $field:ident) => {};
    (@one crd, $ty:ty, $field:ident) => {};
    (@one whole, $ty:ty, $field:ident) => { cached!($ty, $field); };
    (@one labelled, $ty:ty, $field:ident) => { cached!($ty, $field); };
    (@one slim, $ty:ty, $field:ident) => { by_generation!($ty, $field, |l: &$ty| Some(l.clone())); };
    (@one meta, $ty:ty, $field:ident) => { by_generation!($ty, $field, |_: &PartialObjectMeta<$ty>| None); };
}
child_kinds!(impl_cached);

fn applied_hash_of(meta: &ObjectMeta) -> Option<&String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH_ANNOTATION))
}

/// Whether live metadata has the applied hash and every label, annotation and owner reference
/// the desired metadata has.
fn metadata_unchanged(desired: &ObjectMeta, live: &ObjectMeta) -> bool {
    let want = applied_hash_of(desired);
    if want.is_none() || want != applied_hash_of(live) {
        return false;
    }
    match (serde_json::to_value(desired), serde_json::to_value(live)) {
        (Ok(d), Ok(l)) => contained(&d, &l),
        _ => false,
    }
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
    let want = applied_hash_of(desired.meta());
    if want.is_none() || want != applied_hash_of(live.meta()) {
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
    use k8s_openapi::api::batch::v1::CronJob;
    use serde_json::json;

    fn meta(uid: &str, generation: i64, hash: &str) -> ObjectMeta {
        serde_json::from_value(json!({
            "name": "tator-sizer", "namespace": "ns", "uid": uid, "generation": generation,
            "annotations": {APPLIED_HASH_ANNOTATION: hash}, "labels": {"a": "b"}
        }))
        .unwrap()
    }

    #[test]
    fn remembered_generations_tell_edits_and_recreations() {
        let g = Generations::default();
        assert!(
            !g.matches("CronJob", &meta("u1", 3, "h1")),
            "nothing remembered yet"
        );
        g.remember("CronJob", &meta("u1", 3, "h1"));
        assert!(g.matches("CronJob", &meta("u1", 3, "h1")));
        assert!(
            !g.matches("Deployment", &meta("u1", 3, "h1")),
            "another kind"
        );
        assert!(!g.matches("CronJob", &meta("u1", 4, "h1")), "spec edited");
        assert!(!g.matches("CronJob", &meta("u1", 3, "h2")), "hash changed");
        assert!(!g.matches("CronJob", &meta("u2", 3, "h1")), "recreated");
        g.forget("CronJob", &meta("u1", 3, "h1"));
        assert!(g.is_empty());
    }

    #[test]
    fn slim_copies_keep_what_the_status_reads() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "tator-api", "generation": 4, "labels": {"a": "b"},
                         "managedFields": [{"manager": "tator-operator"}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "api", "image": "x"}]}}},
            "status": {"readyReplicas": 2, "replicas": 3, "updatedReplicas": 2,
                       "observedGeneration": 4, "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "too slow"}]}
        }))
        .unwrap();
        let read = crate::workload::Workload::of_deployment(&d);
        Cached::trim(&mut d);
        assert_eq!(crate::workload::Workload::of_deployment(&d), read);
        assert_eq!(read.stalled.as_deref(), Some("too slow"));
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert!(spec.template.spec.is_none() && spec.template.metadata.is_none());
        assert!(spec.selector.match_labels.is_none());
        assert_eq!(
            d.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(d.metadata.labels.as_ref().unwrap()["a"], "b");
        assert!(d.metadata.managed_fields.is_none());

        let mut s: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "tator-postgis", "generation": 2},
            "spec": {"replicas": 1, "serviceName": "x", "selector": {}, "template": {
                "spec": {"containers": [{"name": "db", "image": "x"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}]},
            "status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                       "observedGeneration": 2}
        }))
        .unwrap();
        let read = crate::workload::Workload::of_stateful_set(&s);
        Cached::trim(&mut s);
        assert_eq!(crate::workload::Workload::of_stateful_set(&s), read);
        assert!(s.spec.as_ref().unwrap().volume_claim_templates.is_none());
    }

    #[test]
    fn cron_jobs_are_compared_by_metadata_and_generation() {
        let desired: CronJob = serde_json::from_value(json!({
            "metadata": {"name": "tator-sizer", "namespace": "ns",
                         "annotations": {APPLIED_HASH_ANNOTATION: "h1"}, "labels": {"a": "b"}},
            "spec": {"schedule": "10 * * * *", "jobTemplate": {}}
        }))
        .unwrap();
        let live = meta("u1", 3, "h1");
        assert!(metadata_unchanged(desired.meta(), &live));
        let mut relabelled = live.clone();
        relabelled.labels = None;
        assert!(!metadata_unchanged(desired.meta(), &relabelled));
        let mut foreign = live.clone();
        foreign
            .annotations
            .get_or_insert_default()
            .insert("example.com/note".into(), "x".into());
        assert!(metadata_unchanged(desired.meta(), &foreign));
    }

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
