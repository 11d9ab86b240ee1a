//! The environment of Tator's Django processes (API, workers, migrations, maintenance): the
//! variables and volumes every Tator pod gets, and the pieces they are made of: where the data
//! services are, the `DEFAULT_*` bucket variables and the transcode service. Secret values are
//! always `secretKeyRef`s.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use tator_api::SslMode;

use super::{
    buckets::{bucket_env_names, buckets_secret_name, system_buckets},
    common::*,
    features::transcodes_enabled,
    names::{API, API_PORT, ELASTICSEARCH, PGBOUNCER, POSTGRES, REDIS, SERVICE_PORT, TRANSCODE},
};
use crate::validate::ValidatedTator;

/// Key of the Django secret key in its Secret.
pub const DJANGO_SECRET_KEY: &str = "secretKey";

/// The shared folders every Tator (Django) container mounts.
pub const TATOR_SHARED: &[(&str, &str)] = &[
    ("static", "/static"),
    ("media", "/media"),
    ("backup", "/backup"),
    ("migrations", "/tator_online/main/migrations"),
];

/// Annotation on pod templates carrying a hash of the system-bucket settings they read from the
/// operator's buckets Secret.
pub const BUCKETS_HASH_ANNOTATION: &str = "tator.io/buckets-hash";

/// The environment Tator's Django processes (API, workers, migrations) expect. Secret values
/// are always `secretKeyRef`s.
pub fn tator_env(t: &ValidatedTator, version: &str) -> Vec<EnvVar> {
    let spec = &t.spec;
    let mut env_vars = vec![
        EnvVar {
            name: "DJANGO_SECRET_KEY".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: t.child_name("django"),
                    key: DJANGO_SECRET_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env("MAIN_HOST", spec.domain.clone()),
        env("ALIAS_HOSTS", alias_hosts(t)),
        env(
            "REQUIRE_HTTPS",
            if spec.tls.is_some() { "TRUE" } else { "FALSE" },
        ),
        env("GIT_VERSION", version),
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    env_vars.extend(data_env(&endpoints(t), t.needs.elasticsearch));
    env_vars.extend(bucket_env(t));
    env_vars.extend(workflow_env(t));
    env_vars.extend(api_env(t));
    env_vars
}

/// Tator's ALIAS_HOSTS (more names Django accepts as its host): the spec's aliases and, with
/// transcodes, the API Service's name, which the workers call back at (`GUNICORN_HOST`).
pub fn alias_hosts(t: &ValidatedTator) -> String {
    let mut hosts = t.spec.aliases.clone();
    if transcodes_enabled(t) {
        hosts.push(t.child_name(API));
    }
    hosts.join(",")
}

/// Volumes and mounts every Tator (Django) pod needs: the shared folders and, with a managed
/// PostgreSQL that has a CA, its certificate.
pub fn tator_volumes(t: &ValidatedTator) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![shared_volume(t)];
    let mut mounts = shared_mounts(TATOR_SHARED, false);
    if let Some((v, m)) = pg_ca_volume(&endpoints(t)) {
        volumes.push(v);
        mounts.push(m);
    }
    (volumes, mounts)
}

/// The secrets-hash annotation (when the fetch stage computed one) and the buckets hash.
pub fn secrets_annotation(t: &ValidatedTator) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = t
        .secrets_hash
        .iter()
        .map(|h| (SECRETS_HASH_ANNOTATION.to_string(), h.clone()))
        .collect();
    out.insert(BUCKETS_HASH_ANNOTATION.to_string(), settings_hash(t));
    out
}

/// Tator's WORKFLOW_STORAGE_CLASSES: `workflows.storageClasses`, else the transcode scratch
/// class, else the cluster's default StorageClass (when the fetch stage could read it).
pub fn workflow_storage_classes(t: &ValidatedTator) -> String {
    let w = &t.spec.workflows;
    if !w.storage_classes.is_empty() {
        return w.storage_classes.join(",");
    }
    w.transcode
        .scratch_storage_class
        .clone()
        .or_else(|| t.cluster.default_storage_class.clone())
        .unwrap_or_default()
}

/// The workflow settings Tator reads. (Tator 1.5.0 reads no REMOTE_TRANSCODE_* setting: its
/// uploads go to the transcode service, so a transcode job cluster only hosts the templates.)
fn workflow_env(t: &ValidatedTator) -> Vec<EnvVar> {
    // Tator splits WORKFLOW_STORAGE_CLASSES whenever an algorithm claims a volume: always set.
    vec![env("WORKFLOW_STORAGE_CLASSES", workflow_storage_classes(t))]
}

/// Folder the PostgreSQL CA certificate is mounted in.
pub const PG_CA_DIR: &str = "/etc/tator/postgres-ca";

/// Where Tator finds its data services.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoints {
    pub pg_host: String,
    pub pg_port: i32,
    pub pg_user: SecretKeySelector,
    pub pg_password: SecretKeySelector,
    pub pg_ssl_mode: Option<SslMode>,
    pub pg_ca: Option<tator_api::SecretKeyRef>,
    pub redis_host: String,
    pub redis_port: i32,
    pub redis_password: Option<SecretKeySelector>,
    pub redis_tls: bool,
    pub es_url: String,
    pub es_credentials: Option<(SecretKeySelector, SecretKeySelector)>,
}

pub fn endpoints(t: &ValidatedTator) -> Endpoints {
    let spec = &t.spec;
    let (pg_host, pg_port, pg_user, pg_password, pg_ssl_mode, pg_ca) = match &spec.postgres.external
    {
        Some(ext) => (
            ext.host.clone(),
            ext.port,
            key_ref(
                &ext.credentials_secret.name,
                &ext.credentials_secret.username_key,
            ),
            key_ref(
                &ext.credentials_secret.name,
                &ext.credentials_secret.password_key,
            ),
            Some(ext.ssl_mode),
            ext.ca_secret.clone(),
        ),
        None => {
            let pooled = spec
                .postgres
                .in_cluster
                .as_ref()
                .is_some_and(|p| p.pgbouncer.enabled);
            let host = t.child_name(if pooled { PGBOUNCER } else { POSTGRES });
            let secret = t.child_name(POSTGRES);
            (
                host,
                5432,
                key_ref(&secret, "username"),
                key_ref(&secret, "password"),
                None,
                None,
            )
        }
    };
    let (redis_host, redis_port, redis_password, redis_tls) = match &spec.redis.external {
        Some(ext) => (
            ext.host.clone(),
            ext.port,
            ext.password_secret
                .as_ref()
                .map(|s| key_ref(&s.name, &s.key)),
            ext.tls,
        ),
        None => {
            let auth = spec.redis.in_cluster.as_ref().is_none_or(|r| r.auth);
            (
                t.child_name(REDIS),
                6379,
                auth.then(|| key_ref(&t.child_name(REDIS), "password")),
                false,
            )
        }
    };
    let (es_url, es_credentials) = match &spec.elasticsearch.external {
        Some(ext) => (
            ext.url.trim_end_matches('/').to_string(),
            ext.credentials_secret.as_ref().map(|c| {
                (
                    key_ref(&c.name, &c.username_key),
                    key_ref(&c.name, &c.password_key),
                )
            }),
        ),
        None => (format!("http://{}:9200", t.child_name(ELASTICSEARCH)), None),
    };
    Endpoints {
        pg_host,
        pg_port,
        pg_user,
        pg_password,
        pg_ssl_mode,
        pg_ca,
        redis_host,
        redis_port,
        redis_password,
        redis_tls,
        es_url,
        es_credentials,
    }
}

/// The environment wiring Tator's processes to the data services (Elasticsearch only for a
/// release that uses it).
pub fn data_env(e: &Endpoints, elasticsearch: bool) -> Vec<EnvVar> {
    let mut v = vec![
        env("POSTGRES_HOST", e.pg_host.clone()),
        env("POSTGRES_PORT", e.pg_port.to_string()),
        // Tator's search connections (main/search.py) pass no port: libpq reads PGPORT.
        env("PGPORT", e.pg_port.to_string()),
        env_secret("POSTGRES_USER", &e.pg_user),
        env_secret("POSTGRES_PASSWORD", &e.pg_password),
    ];
    if let Some(mode) = e.pg_ssl_mode {
        // libpq (psycopg2) reads these for every connection.
        v.push(env("PGSSLMODE", mode.as_str()));
    }
    if e.pg_ca.is_some() {
        v.push(env("PGSSLROOTCERT", format!("{PG_CA_DIR}/ca.crt")));
    }
    v.push(env("REDIS_HOST", e.redis_host.clone()));
    v.push(env("REDIS_PORT", e.redis_port.to_string()));
    if let Some(p) = &e.redis_password {
        v.push(env_secret("REDIS_PASSWORD", p));
    }
    v.push(env(
        "REDIS_USE_SSL",
        if e.redis_tls { "true" } else { "false" },
    ));
    if !elasticsearch {
        return v;
    }
    match &e.es_credentials {
        Some((user, password)) => {
            v.push(env_secret("ELASTICSEARCH_USERNAME", user));
            v.push(env_secret("ELASTICSEARCH_PASSWORD", password));
            // Kubernetes expands $(VAR) from the variables above: no secret in the pod spec.
            let (scheme, rest) = e
                .es_url
                .split_once("://")
                .unwrap_or(("http", e.es_url.as_str()));
            v.push(env(
                "ELASTICSEARCH_HOST",
                format!("{scheme}://$(ELASTICSEARCH_USERNAME):$(ELASTICSEARCH_PASSWORD)@{rest}"),
            ));
        }
        None => v.push(env("ELASTICSEARCH_HOST", e.es_url.clone())),
    }
    v
}

/// The volume and mount of the PostgreSQL CA, when one is configured.
pub fn pg_ca_volume(e: &Endpoints) -> Option<(Volume, VolumeMount)> {
    let ca = e.pg_ca.as_ref()?;
    Some((
        Volume {
            name: "postgres-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "postgres-ca".into(),
            mount_path: PG_CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ))
}

/// The `DEFAULT_*` variables as `secretKeyRef`s into the operator's buckets Secret.
pub fn bucket_env(t: &ValidatedTator) -> Vec<EnvVar> {
    let secret = buckets_secret_name(t);
    bucket_env_names(t)
        .into_iter()
        .map(|name| {
            let sel = SecretKeySelector {
                name: secret.clone(),
                key: name.clone(),
                optional: Some(false),
            };
            env_secret(&name, &sel)
        })
        .collect()
}

/// A hash of the non-secret object-storage settings, for the pod templates that read the
/// buckets Secret: a changed bucket rolls them.
pub fn settings_hash(t: &ValidatedTator) -> String {
    let names: Vec<String> = system_buckets(t)
        .into_iter()
        .map(|(role, p)| format!("{role:?}={p:?}"))
        .collect();
    short_hash(names.join(";").as_bytes(), 16)
}

/// Tator's `TRANSCODE_HOST`: the service's URL.
pub fn service_url(t: &ValidatedTator) -> String {
    format!("http://{}:{SERVICE_PORT}", t.child_name(TRANSCODE))
}

/// Tator's `GUNICORN_HOST`: where workers call back into the REST API (its Service; the name
/// is in `ALIAS_HOSTS`, so Django accepts it as a host).
pub fn callback_url(t: &ValidatedTator) -> String {
    format!("http://{}:{}", t.child_name(API), API_PORT)
}

/// The REST API's environment for transcodes (`api/main/rest/transcode.py`): where to post jobs,
/// and the callback host, which Tator takes from `GUNICORN_HOST` only with `COMPOSE_DEPLOY=true`
/// (otherwise `http://gunicorn-svc:8000`).
pub fn api_env(t: &ValidatedTator) -> Vec<k8s_openapi::api::core::v1::EnvVar> {
    if !transcodes_enabled(t) {
        return Vec::new();
    }
    vec![
        env("TRANSCODE_HOST", service_url(t)),
        env("GUNICORN_HOST", callback_url(t)),
        env("COMPOSE_DEPLOY", "true"),
    ]
}
