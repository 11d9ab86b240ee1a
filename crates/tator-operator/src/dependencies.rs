//! Observe: is each data service ready? In-cluster services are judged by their workloads (as
//! applied this round); managed ones are checked for real from the operator process.

use kube::{Client, ResourceExt};

use crate::{
    apply::Applied,
    builders::{
        data::EXTENSIONS,
        names::{DATABASE, ELASTICSEARCH, PGBOUNCER, POSTGRES, REDIS},
    },
    checks::{self, CheckError, Password},
    validate::ValidatedTator,
};
use crate::{finding::Finding, workload::Workload};

impl From<Result<String, CheckError>> for Finding {
    fn from(r: Result<String, CheckError>) -> Self {
        match r {
            Ok(msg) => Self::ready("Reachable", msg),
            Err(e) => Self::not_ready(e.reason, e.message),
        }
    }
}

/// Readiness of the three data services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependencies {
    pub database: Finding,
    pub cache: Finding,
    /// Elasticsearch, when something uses it (the release or the logging stack).
    pub search: Option<Finding>,
    /// The release itself uses Elasticsearch: migrations wait for it.
    pub search_required: bool,
}

impl Dependencies {
    /// What Tator's processes need is ready: migrations may run.
    pub fn all_ready(&self) -> bool {
        self.database.ok
            && self.cache.ok
            && (!self.search_required || self.search.as_ref().is_some_and(|s| s.ok))
    }

    /// Everything ready (for render and unit tests).
    pub fn assumed_ready() -> Self {
        let r = || Finding::ready("Assumed", "");
        Self {
            database: r(),
            cache: r(),
            search: None,
            search_required: false,
        }
    }
}

fn sts_ready(applied: &Applied, name: &str) -> Finding {
    let found = applied.stateful_sets.iter().find(|s| s.name_any() == name);
    workload_state(name, found.map(Workload::of_stateful_set))
}

fn deploy_ready(applied: &Applied, name: &str) -> Finding {
    let found = applied.deployments.iter().find(|d| d.name_any() == name);
    workload_state(name, found.map(Workload::of_deployment))
}

fn workload_state(name: &str, workload: Option<Workload>) -> Finding {
    let Some(w) = workload else {
        return Finding::not_ready("NotApplied", format!("{name} is not created yet"));
    };
    let (desired, ready) = (w.desired, w.ready);
    if w.serving() {
        Finding::ready("WorkloadReady", format!("{name}: {ready}/{desired} ready"))
    } else {
        Finding::not_ready(
            "WorkloadNotReady",
            format!("{name}: {ready}/{desired} ready"),
        )
    }
}

async fn external_postgres(
    client: &Client,
    t: &ValidatedTator,
    ext: &tator_api::PostgresExternal,
) -> Finding {
    let creds = &ext.credentials_secret;
    let result = async {
        let user =
            checks::secret_value(client, &t.namespace, &creds.name, &creds.username_key).await?;
        let password = Password::new(
            checks::secret_value(client, &t.namespace, &creds.name, &creds.password_key).await?,
        );
        let ca_pem = match &ext.ca_secret {
            Some(ca) => Some(checks::secret_value(client, &t.namespace, &ca.name, &ca.key).await?),
            None => None,
        };
        let target = checks::PostgresTarget {
            host: ext.host.clone(),
            port: u16::try_from(ext.port).unwrap_or(5432),
            user,
            password,
            database: DATABASE.into(),
            ssl_mode: ext.ssl_mode,
            ca_pem,
            extensions: EXTENSIONS.iter().map(ToString::to_string).collect(),
        };
        checks::check_postgres(&target).await
    }
    .await;
    result.into()
}

async fn external_redis(
    client: &Client,
    t: &ValidatedTator,
    ext: &tator_api::RedisExternal,
) -> Finding {
    let result = async {
        let password = match &ext.password_secret {
            Some(s) => Some(Password::new(
                checks::secret_value(client, &t.namespace, &s.name, &s.key).await?,
            )),
            None => None,
        };
        let target = checks::RedisTarget {
            host: ext.host.clone(),
            port: u16::try_from(ext.port).unwrap_or(6379),
            tls: ext.tls,
            password,
        };
        checks::check_redis(&target).await
    }
    .await;
    result.into()
}

async fn external_elasticsearch(
    client: &Client,
    t: &ValidatedTator,
    ext: &tator_api::ElasticsearchExternal,
) -> Finding {
    let result = async {
        let credentials = match &ext.credentials_secret {
            Some(c) => Some((
                checks::secret_value(client, &t.namespace, &c.name, &c.username_key).await?,
                Password::new(
                    checks::secret_value(client, &t.namespace, &c.name, &c.password_key).await?,
                ),
            )),
            None => None,
        };
        let ca_pem = match &ext.ca_secret {
            Some(ca) => Some(checks::secret_value(client, &t.namespace, &ca.name, &ca.key).await?),
            None => None,
        };
        checks::check_elasticsearch(&checks::ElasticsearchTarget {
            url: ext.url.clone(),
            credentials,
            ca_pem,
        })
        .await
    }
    .await;
    result.into()
}

/// Observes every dependency; managed ones are checked concurrently, each bounded in time.
pub async fn observe(client: &Client, t: &ValidatedTator, applied: &Applied) -> Dependencies {
    let spec = &t.spec;
    let database = async {
        match (&spec.postgres.external, &spec.postgres.in_cluster) {
            (Some(ext), _) => external_postgres(client, t, ext).await,
            (None, Some(pg)) => {
                let db = sts_ready(applied, &t.child_name(POSTGRES));
                if db.ok && pg.pgbouncer.enabled {
                    deploy_ready(applied, &t.child_name(PGBOUNCER))
                } else {
                    db
                }
            }
            (None, None) => Finding::not_ready(
                "NotConfigured",
                "postgres has neither inCluster nor external",
            ),
        }
    };
    let cache = async {
        match &spec.redis.external {
            Some(ext) => external_redis(client, t, ext).await,
            None => deploy_ready(applied, &t.child_name(REDIS)),
        }
    };
    // Elasticsearch is checked only while something uses it.
    let search = async {
        if !crate::builders::data::elasticsearch_used(t) {
            return None;
        }
        Some(match &spec.elasticsearch.external {
            Some(ext) => external_elasticsearch(client, t, ext).await,
            None => sts_ready(applied, &t.child_name(ELASTICSEARCH)),
        })
    };
    let (database, cache, search) = futures::join!(database, cache, search);
    Dependencies {
        database,
        cache,
        search,
        search_required: t.needs.elasticsearch,
    }
}

/// Names of the user's Secrets that Tator's pods read (managed-service credentials and CAs).
pub fn referenced_secrets(t: &ValidatedTator) -> Vec<String> {
    let spec = &t.spec;
    let mut names = Vec::new();
    if let Some(pg) = &spec.postgres.external {
        names.push(pg.credentials_secret.name.clone());
        names.extend(pg.ca_secret.as_ref().map(|c| c.name.clone()));
    }
    if let Some(r) = &spec.redis.external {
        names.extend(r.password_secret.as_ref().map(|s| s.name.clone()));
    }
    if let Some(es) = &spec.elasticsearch.external
        && crate::builders::data::elasticsearch_used(t)
    {
        names.extend(es.credentials_secret.as_ref().map(|c| c.name.clone()));
    }
    // Credentials of external system buckets end up in the buckets Secret the pods read.
    for (_, p) in crate::builders::buckets::system_buckets(t) {
        if let crate::builders::buckets::Placement::External(e) = p {
            names.push(e.credentials_secret);
        }
    }
    names.sort();
    names.dedup();
    names
}

/// A hash of the resourceVersions of the referenced Secrets (metadata only: no value is read),
/// so that rotating a password rolls the pods that use it. None when there are none.
pub fn secrets_hash(t: &ValidatedTator, facts: &crate::consent::SecretFacts) -> Option<String> {
    let names = referenced_secrets(t);
    if names.is_empty() {
        return None;
    }
    let versions: Vec<String> = names
        .iter()
        .map(|name| format!("{name}={}", facts.resource_version(name)))
        .collect();
    Some(crate::builders::common::short_hash(
        versions.join(",").as_bytes(),
        16,
    ))
}

/// Whether any data service is managed (checked from the operator rather than judged by a
/// workload in the cluster).
/// In-cluster data services that stay although the spec moved to a managed service, because
/// the managed one is not ready yet: the components (labels) prune must spare this round. The
/// old server keeps its data and keeps serving the pods that still use it until the new one
/// answers; a switch with a missing Secret or an unreachable host deletes nothing.
pub fn spared_components(t: &ValidatedTator, deps: &Dependencies) -> Vec<&'static str> {
    use crate::builders::names::{ELASTICSEARCH, PGBOUNCER, POSTGRES, REDIS};
    let s = &t.spec;
    let mut out = Vec::new();
    if s.postgres.external.is_some() && !deps.database.ok {
        out.extend([POSTGRES, PGBOUNCER]);
    }
    if s.redis.external.is_some() && !deps.cache.ok {
        out.push(REDIS);
    }
    if s.elasticsearch.external.is_some() && deps.search.as_ref().is_some_and(|d| !d.ok) {
        out.push(ELASTICSEARCH);
    }
    out
}

pub fn has_managed_services(t: &ValidatedTator) -> bool {
    let s = &t.spec;
    s.postgres.external.is_some()
        || s.redis.external.is_some()
        || (s.elasticsearch.external.is_some() && crate::builders::data::elasticsearch_used(t))
        || crate::objstore::has_external_buckets(t)
}
