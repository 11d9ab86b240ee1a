//! The operator's Kubernetes client, with a layer counting API requests by verb and resource
//! (for `/metrics` and the benchmarks).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{Method, Request};
use kube::{Client, Config, client::ClientBuilder};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::metrics::RequestLabels;
use tower::{Layer, Service};

/// API requests sent, by `(verb, resource)`. Verbs follow the API server's audit verbs:
/// get, list, watch, create, update, patch, apply, delete, deletecollection.
#[derive(Clone, Debug, Default)]
pub struct RequestCounts {
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
    /// Also counted into this metric family, when given.
    exported: Option<Family<RequestLabels, Counter>>,
}

impl RequestCounts {
    /// Counts that are also exported as `tator_operator_kubernetes_requests_total`.
    pub fn exported(family: Family<RequestLabels, Counter>) -> Self {
        Self {
            counts: Arc::default(),
            exported: Some(family),
        }
    }

    fn add(&self, verb: &str, resource: &str) {
        if let Ok(mut m) = self.counts.lock() {
            *m.entry((verb.to_string(), resource.to_string()))
                .or_insert(0) += 1;
        }
        if let Some(f) = &self.exported {
            f.get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .inc();
        }
    }

    /// Every count so far.
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.counts.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Counts by verb.
    pub fn by_verb(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((verb, _), n) in self.snapshot() {
            *out.entry(verb).or_insert(0) += n;
        }
        out
    }
}

/// Verb and resource of a request to the Kubernetes API, from its method, path and query.
pub fn classify(method: &Method, path: &str, query: &str, content_type: &str) -> (String, String) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match segs.as_slice() {
        ["api", _v, rest @ ..] => rest,
        ["apis", _g, _v, rest @ ..] => rest,
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [r, _name, sub, ..] => format!("{r}/{sub}"),
        [r, ..] => (*r).to_string(),
        [] => "other".to_string(),
    };
    let named = rest.len() >= 2;
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH if content_type.starts_with("application/apply-patch") => "apply",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb.to_string(), resource)
}

/// Tower layer counting requests into [`RequestCounts`].
#[derive(Clone)]
pub struct CountLayer(pub RequestCounts);

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counts: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counts: RequestCounts,
}

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (verb, resource) = classify(
            req.method(),
            req.uri().path(),
            req.uri().query().unwrap_or(""),
            content_type,
        );
        self.counts.add(&verb, &resource);
        self.inner.call(req)
    }
}

/// A client for `config` whose requests are counted.
pub fn counted_client(config: Config) -> Result<(Client, RequestCounts), kube::Error> {
    counted_client_with(config, RequestCounts::default())
}

/// A client for `config` whose requests are counted into `counts`.
pub fn counted_client_with(
    config: Config,
    counts: RequestCounts,
) -> Result<(Client, RequestCounts), kube::Error> {
    let client = ClientBuilder::try_from(config)?
        .with_layer(&CountLayer(counts.clone()))
        .build();
    Ok((client, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_like_the_api_server_does() {
        let c = |m: Method, p: &str, q: &str, ct: &str| classify(&m, p, q, ct);
        assert_eq!(
            c(
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments",
                "watch=true&timeoutSeconds=290",
                ""
            ),
            ("watch".into(), "deployments".into())
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/apps/v1/namespaces/a/deployments",
                "",
                ""
            ),
            ("list".into(), "deployments".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/a/secrets/s", "", ""),
            ("get".into(), "secrets".into())
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/tator.io/v1alpha1/namespaces/a/tatordeployments/t/status",
                "fieldManager=x&force=true",
                "application/apply-patch+yaml"
            ),
            ("apply".into(), "tatordeployments/status".into())
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/api/v1/namespaces/a/secrets/s",
                "",
                "application/merge-patch+json"
            ),
            ("patch".into(), "secrets".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces", "", ""),
            ("list".into(), "namespaces".into())
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/namespaces/a/configmaps/c", "", ""),
            ("delete".into(), "configmaps".into())
        );
    }
}
