//! Which third-party CRDs the operator uses are installed (cert-manager's Certificate,
//! prometheus-operator's ServiceMonitor and PodMonitor, Argo's WorkflowTemplate, KEDA's
//! ScaledObject): one watch per CRD name, so that reconciles need not ask. A change reconciles
//! every installation. While a watch has not listed, or may not watch (a namespace-scoped
//! install), the answer is "not known" and the fetch stage asks the API server as before.

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    discovery::ApiResource,
    runtime::{WatchStreamExt, watcher},
};
use tracing::debug;

use crate::builders::children::child_kinds;
use crate::cache::CrdPresence;

/// The CRDs whose objects the operator may apply or prune: the `crd` kinds of the table of
/// child kinds.
pub fn watched() -> Vec<ApiResource> {
    macro_rules! crds {
        ([] $( $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident $(($($arg:tt)*))? ; )*) => {
            [$( crds!(@one $how $(($($arg)*))?) ),*].into_iter().flatten().collect()
        };
        (@one crd($resource:path, $kind:literal)) => { Some($resource()) };
        (@one $how:ident) => { None };
    }
    child_kinds!(crds)
}

/// Whether the API server refused the watch (403).
fn refused(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Watches one CRD by name (`<plural>.<group>`) until the process stops; `changed` is told when
/// the answer moves between installed and not. The first answer tells nobody: reconciles that
/// ran before it asked the API server themselves.
pub async fn watch(
    client: Client,
    name: String,
    presence: CrdPresence,
    changed: futures::channel::mpsc::UnboundedSender<()>,
) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let by_name = format!("metadata.name={name}");
    // Asked once first: a namespace-scoped install may not watch CRDs, and a refused watch
    // would be retried (and logged) forever.
    let probe = kube::api::ListParams::default().fields(&by_name).limit(1);
    if let Err(kube::Error::Api(s)) = api.list_metadata(&probe).await
        && s.code == 403
    {
        debug!(crd = %name, "this CRD is not watched here; reconciles ask instead");
        return;
    }
    let config = watcher::Config::default().fields(&by_name);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed = false;
    let mut failing = false;
    let mut last: Option<bool> = None;
    while let Some(event) = events.next().await {
        let installed = match event {
            Ok(watcher::Event::Init) => {
                listed = false;
                continue;
            }
            Ok(watcher::Event::InitApply(crd)) => {
                listed = established(&crd);
                continue;
            }
            Ok(watcher::Event::InitDone) => Some(listed),
            Ok(watcher::Event::Apply(crd)) => Some(established(&crd)),
            Ok(watcher::Event::Delete(_)) => Some(false),
            Err(e) => {
                presence.set(&name, None);
                if refused(&e) {
                    // The install does not grant it (namespace-scoped): not an error.
                    debug!(crd = %name, "this CRD is not watched here; reconciles ask instead");
                    return;
                }
                if !failing {
                    debug!(crd = %name, error = %e, "the CRD watch failed; reconciles ask until it recovers");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        presence.set(&name, installed);
        if last.is_some() && installed != last {
            debug!(crd = %name, ?installed, "CRD presence changed");
            let _ = changed.unbounded_send(());
        }
        last = installed;
    }
}
