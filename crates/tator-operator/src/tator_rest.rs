//! Tator's REST API as the operator calls it: one client for every call (token auth, the
//! domain as Host header, no redirects, a timeout, bounded bodies) and the endpoints the operator
//! uses, each a collection per organization (`/rest/<Kind>s/<organization>`: list, create) and an
//! item (`/rest/<Kind>/<id>`: update, delete). Errors carry a stable reason and a message from
//! which every credential the caller names has been removed.

use serde_json::Value;

use crate::{checks::CHECK_TIMEOUT, validate::ValidatedTator};

/// The kinds of Tator object the operator registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Object-storage buckets (`/rest/Buckets/<organization>`, `/rest/Bucket/<id>`).
    Bucket,
    /// Clusters Tator submits workflows to (`/rest/JobClusters/<organization>`,
    /// `/rest/JobCluster/<id>`).
    JobCluster,
}

impl Kind {
    fn item(self) -> &'static str {
        match self {
            Kind::Bucket => "Bucket",
            Kind::JobCluster => "JobCluster",
        }
    }
}

/// A failed call: a stable reason (`ApiUnreachable`, `ApiError`, `NotFound`) and a message
/// without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub reason: &'static str,
    pub message: String,
}

/// Base URL of the REST API: the spec's, or the API Service.
pub fn api_url(t: &ValidatedTator) -> String {
    match t.spec.api_access.as_ref().and_then(|a| a.url.clone()) {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!(
            "http://{}.{}.svc:{}",
            t.child_name(crate::builders::names::API),
            t.namespace,
            crate::builders::names::API_PORT
        ),
    }
}

/// The Host header of every call: the domain (Tator's MAIN_HOST). Tator's ALLOWED_HOSTS holds
/// MAIN_HOST, ALIAS_HOSTS and a few compose names, never `<name>-api.<namespace>.svc`, so a
/// call without it is answered 400 (DisallowedHost).
pub fn api_host(t: &ValidatedTator) -> String {
    t.spec.domain.clone()
}

/// A client of one installation's REST API, authenticated with one token.
pub struct TatorRest<'a> {
    http: reqwest::Client,
    base: String,
    host: String,
    token: &'a str,
    /// Values that must never appear in a message (the token among them).
    secrets: Vec<String>,
}

impl<'a> TatorRest<'a> {
    /// A client for `t`'s API. `secrets` are further values (credentials in request bodies)
    /// that no message may carry; the token is always one of them.
    pub fn new(
        t: &ValidatedTator,
        token: &'a str,
        mut secrets: Vec<String>,
    ) -> Result<Self, CallError> {
        secrets.push(token.to_string());
        let http = crate::checks::tls_config(None, true)
            .map_err(|e| e.message)
            .and_then(|tls| {
                reqwest::Client::builder()
                    .timeout(CHECK_TIMEOUT)
                    .no_proxy()
                    // A redirect could send the token and the credentials in the body
                    // elsewhere, https to http included.
                    .redirect(reqwest::redirect::Policy::none())
                    .tls_backend_preconfigured(tls)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(|message| CallError {
                reason: "ApiError",
                message,
            })?;
        Ok(Self {
            http,
            base: api_url(t),
            host: api_host(t),
            token,
            secrets,
        })
    }

    /// Every object of a kind in an organization.
    pub async fn list(&self, kind: Kind, organization: i64) -> Result<Vec<Value>, CallError> {
        let list = self
            .call(
                reqwest::Method::GET,
                &format!("/rest/{}s/{organization}", kind.item()),
                None,
            )
            .await?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    /// Creates an object in an organization and returns its id.
    pub async fn create(
        &self,
        kind: Kind,
        organization: i64,
        body: &Value,
    ) -> Result<i64, CallError> {
        let path = format!("/rest/{}s/{organization}", kind.item());
        let created = self.call(reqwest::Method::POST, &path, Some(body)).await?;
        created["id"].as_i64().ok_or_else(|| CallError {
            reason: "ApiError",
            message: format!("POST {path} answered without an id"),
        })
    }

    /// Updates the object `id` with the fields of `body`.
    pub async fn update(&self, kind: Kind, id: i64, body: &Value) -> Result<(), CallError> {
        self.call(
            reqwest::Method::PATCH,
            &format!("/rest/{}/{id}", kind.item()),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Deletes the object `id`: `Ok(false)` when Tator had no such object.
    pub async fn delete(&self, kind: Kind, id: i64) -> Result<bool, CallError> {
        match self
            .call(
                reqwest::Method::DELETE,
                &format!("/rest/{}/{id}", kind.item()),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.reason == "NotFound" => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn scrub(&self, mut m: String) -> String {
        for s in &self.secrets {
            if s.len() >= 4 {
                m = m.replace(s.as_str(), "***");
            }
        }
        m
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let what = format!("{method} {path}");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::HOST, self.host.as_str())
            .header("Authorization", format!("Token {}", self.token))
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| CallError {
            reason: "ApiUnreachable",
            message: self.scrub(format!(
                "{what}: {}",
                std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string())
            )),
        })?;
        let status = resp.status();
        let text = match crate::bounded::body(resp, crate::bounded::BODY_MAX).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                return Err(CallError {
                    reason: "ApiError",
                    message: format!("{what} answered {status}; {e}"),
                });
            }
        };
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("detail"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        Err(CallError {
            reason: if status.as_u16() == 404 {
                "NotFound"
            } else {
                "ApiError"
            },
            message: self.scrub(format!("{what} answered {status}{detail}")),
        })
    }
}

/// The id of the object named `name` in a listing.
pub fn find_by_name(listing: &[Value], name: &str) -> Option<i64> {
    listing
        .iter()
        .find(|x| x["name"].as_str() == Some(name))
        .and_then(|x| x["id"].as_i64())
}
