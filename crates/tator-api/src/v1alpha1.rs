//! `tator.io/v1alpha1`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

mod object_storage;
pub use object_storage::*;
mod observability;
pub use observability::*;
mod workflows;
pub use workflows::*;
mod maintenance;
pub use maintenance::*;
mod transcodes;
pub use transcodes::*;

// Maintainer note: field docs below are user-facing (`kubectl explain`). Defaults are serde
// defaults so that a stored object that omits a field reads back with the documented value.

/// A whole Tator installation: the REST API and its workers, the UI and the NGINX entry point,
/// kept in the state this spec describes by the Tator operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tator.io",
    version = "v1alpha1",
    kind = "TatorDeployment",
    plural = "tatordeployments",
    shortname = "tator",
    category = "tator",
    namespaced,
    status = "TatorDeploymentStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    validation = Rule::new("size(self.metadata.name) <= 38").message("metadata.name must be at most 38 characters: child object names and labels are derived from it"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be lowercase letters, digits and hyphens, starting with a letter: it names the installation's Services")
)]
#[x_kube(validation = Rule::new("!has(self.buckets) || size(self.buckets) == 0 || has(self.apiAccess)").message("buckets need apiAccess: the operator registers them through Tator's REST API"))]
#[x_kube(validation = Rule::new("!has(self.jobClusters) || self.jobClusters.filter(c, c.runs.exists(r, r == 'transcode')).size() <= 1").message("at most one job cluster runs transcode: Tator's backend has one remote transcode cluster"))]
#[x_kube(validation = Rule::new("!has(self.algorithms) || !self.algorithms.requireRemoteCluster || (has(self.jobClusters) && self.jobClusters.exists(c, c.runs.exists(r, r == 'algorithms')) && self.jobClusters.exists(c, c.runs.exists(r, r == 'transcode')))").message("algorithms.requireRemoteCluster forbids workflows in this cluster: add job clusters that run algorithms and transcode"))]
#[x_kube(validation = Rule::new("!has(self.jobClusters) || !self.jobClusters.exists(c, c.runs.exists(r, r == 'algorithms')) || has(self.apiAccess)").message("a job cluster that runs algorithms needs apiAccess: the operator registers it through Tator's REST API"))]
#[serde(rename_all = "camelCase")]
pub struct TatorDeploymentSpec {
    /// Tator release to run, for example "1.5.0". The operator's release catalog maps it to the
    /// image tag Tator publishes for it (the release's git commit) and to what the release needs;
    /// a release the catalog does not know needs image.tag. Changing it upgrades the
    /// installation: a migrations Job with the new image must succeed before the REST API and
    /// workers roll to it. Moving to an older release is refused.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+\\\\.[0-9]+\\\\.[0-9]+(-[0-9A-Za-z.-]+)?$')").message("version must look like 1.5.0 or 1.5.0-rc1"))]
    #[schemars(length(max = 64))]
    pub version: String,

    /// Public DNS name of the installation (Tator's MAIN_HOST and NGINX's server_name).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("domain must be a lowercase DNS name such as tator.example.com"))]
    #[schemars(length(min = 1, max = 253))]
    pub domain: String,

    /// Further DNS names the installation answers to (Tator's ALIAS_HOSTS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "aliases_schema")]
    pub aliases: Vec<String>,

    /// Where Tator's images come from.
    #[serde(default)]
    pub image: ImageSettings,

    /// HTTPS for the NGINX entry point. Without it NGINX serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,

    /// The gunicorn REST API (Django).
    #[serde(default)]
    pub api: ApiSettings,

    /// Background workers (python-rq queues on Redis).
    #[serde(default)]
    pub workers: WorkersSettings,

    /// The web UI server.
    #[serde(default)]
    pub ui: UiSettings,

    /// NGINX, the only public entry point: routes, TLS termination and the LoadBalancer Service.
    #[serde(default)]
    pub nginx: NginxSettings,

    /// Volumes Tator keeps files on.
    #[serde(default)]
    pub storage: StorageSettings,

    /// The database migrations Job run before each version rolls out.
    #[serde(default)]
    pub migrations: MigrationSettings,

    /// The first Tator administrator (a Django superuser), created by the migrations Job once
    /// the database is migrated, from a Secret: no exec into a pod. An administrator that
    /// already exists is left as it is (change passwords in Tator itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSettings>,

    /// PostgreSQL (with PostGIS, pgvector, ltree and pg_trgm): run in the cluster (the default) or
    /// a managed service.
    #[serde(default)]
    #[schemars(transform = no_schema_default)]
    pub postgres: Postgres,

    /// Redis: run in the cluster (the default) or a managed service.
    #[serde(default)]
    #[schemars(transform = no_schema_default)]
    pub redis: Redis,

    /// Elasticsearch, used by the logging stack (Tator 1.5.0 itself does not use it): run in
    /// the cluster (the default) or a managed service. Nothing is deployed or checked while
    /// nothing uses it.
    #[serde(default)]
    #[schemars(transform = no_schema_default)]
    pub elasticsearch: Elasticsearch,

    /// Object storage for media: the live, upload and backup buckets, and the in-cluster S3
    /// store (SeaweedFS) that serves them unless they are external.
    #[serde(default)]
    pub object_storage: ObjectStorage,

    /// Further buckets registered in Tator for organizations (Tator's /rest/Buckets). The
    /// operator creates or updates each registration, found by name, and records its id in
    /// status.buckets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "buckets_schema")]
    pub buckets: Vec<TatorBucket>,

    /// Logs of every Tator pod in Elasticsearch through Filebeat, kept retentionDays days and
    /// shown by Kibana at /logs. Off by default.
    #[serde(default)]
    pub logging: Logging,

    /// Metrics of the REST API and NGINX in Prometheus (prometheus-operator's, or one of the
    /// operator's own) and Grafana at /grafana. Off by default.
    #[serde(default)]
    pub monitoring: Monitoring,

    /// Video transcodes as Tator 1.5.0 runs them: the transcode service, its queue and a pool
    /// of ffmpeg workers. On by default.
    #[serde(default)]
    pub transcodes: Transcodes,

    /// Argo WorkflowTemplates for transcodes and archive imports, and the roles their pods and
    /// the REST API need. Tator 1.5.0 itself does not submit them (its uploads go through
    /// `transcodes`); they are there for users and algorithms that do.
    #[serde(default)]
    pub workflows: Workflows,

    /// Clusters where transcodes or algorithms run, each reached through a kubeconfig Secret.
    /// The operator creates a namespace, roles, a token for Tator and the WorkflowTemplates
    /// there, and removes them when the entry or the TatorDeployment goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "job_clusters_schema")]
    pub job_clusters: Vec<JobCluster>,

    /// Where algorithm workflows may run.
    #[serde(default)]
    pub algorithms: Algorithms,

    /// Tator's maintenance CronJobs (pruning, expiry, archiving, media backup and restoration)
    /// and the nightly database backup, each with its default schedule.
    #[serde(default)]
    pub maintenance: Maintenance,

    /// How the operator reaches Tator's REST API; needed for buckets and algorithm job clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_access: Option<ApiAccess>,

    /// What happens to data when the TatorDeployment is deleted: Retain (the default) keeps the
    /// volumes and generated Secrets; Delete removes them with it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Freeze: the operator changes nothing in the cluster for spec changes (no apply, no prune,
    /// no migrations) but keeps status current and reports pending changes (condition Paused,
    /// and a Warning Event when the spec asks for changes it holds back).
    #[serde(default)]
    pub paused: bool,

    /// Stop Tator: every workload is scaled to zero (the API, workers, UI, NGINX and the
    /// in-cluster data services); volumes and Secrets are kept. Set it back to false to start
    /// again.
    #[serde(default)]
    pub stopped: bool,

    /// Seconds a Deployment rollout may go without progress before it is reported as stalled
    /// (Stalled=True, reason ProgressDeadlineExceeded) instead of waited on silently.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 5, max = 86400))]
    pub progress_deadline_seconds: i32,
}

fn default_progress_deadline() -> i32 {
    600
}

/// What happens to data when the TatorDeployment is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Keep volumes and generated Secrets.
    #[default]
    Retain,
    /// Delete volumes and generated Secrets with the TatorDeployment.
    Delete,
}

/// A key in a Secret of this namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret. The Secret must list this TatorDeployment in its annotation
    /// tator.io/tator-deployments (or "*"), see docs/security.md.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret holding a user name and a password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecret {
    /// Name of the Secret. The Secret must list this TatorDeployment in its annotation
    /// tator.io/tator-deployments (or "*"), see docs/security.md.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// A persistent volume claim template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSettings {
    /// Size of the volume.
    #[schemars(length(min = 1, max = 32))]
    pub size: String,
    /// Storage class (empty: the cluster default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// PostgreSQL: exactly one of inCluster or external.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inCluster) != has(self.external)").message("postgres needs exactly one of inCluster or external"))]
pub struct Postgres {
    /// Run PostgreSQL in the cluster: a StatefulSet with a volume and generated credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<PostgresInCluster>,
    /// Use a managed PostgreSQL (RDS, Cloud SQL, ...). Nothing of it is created in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<PostgresExternal>,
}

impl Default for Postgres {
    fn default() -> Self {
        Self {
            in_cluster: Some(PostgresInCluster::default()),
            external: None,
        }
    }
}

/// PostgreSQL in the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresInCluster {
    /// The data volume. Its storage class is immutable.
    #[serde(default = "default_pg_volume")]
    #[x_kube(validation = Rule::new("(has(self.storageClassName) == has(oldSelf.storageClassName)) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("postgres.inCluster.storage.storageClassName is immutable: changing it would lose the database"))]
    pub storage: VolumeSettings,

    /// A pgbouncer pool (session pooling) in front of the database; Tator then connects to it.
    #[serde(default)]
    pub pgbouncer: PgBouncer,

    /// Size limit of the memory-backed /dev/shm of the database pod, where PostgreSQL keeps the
    /// shared memory of parallel queries (Tator runs its database with 2 GB). It counts towards
    /// the pod's memory.
    #[serde(default = "default_shm_size")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(Mi|Gi)$')").message("postgres.inCluster.shmSize must look like 512Mi or 2Gi"))]
    #[schemars(length(min = 1, max = 16))]
    pub shm_size: String,

    /// Image, resources and placement (default image <registry>/tator_postgis:<tag>).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for PostgresInCluster {
    fn default() -> Self {
        Self {
            storage: default_pg_volume(),
            pgbouncer: PgBouncer::default(),
            shm_size: default_shm_size(),
            pod: PodSettings::default(),
        }
    }
}

fn default_shm_size() -> String {
    "2Gi".into()
}

fn default_pg_volume() -> VolumeSettings {
    VolumeSettings {
        size: "100Gi".into(),
        storage_class_name: None,
    }
}

/// pgbouncer settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PgBouncer {
    /// Run pgbouncer and point Tator at it.
    #[serde(default)]
    pub enabled: bool,
    /// Image, resources and placement (default image bitnami/pgbouncer).
    #[serde(flatten)]
    pub pod: PodSettings,
}

/// TLS mode of the connection to PostgreSQL (libpq's sslmode).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    #[default]
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// A managed PostgreSQL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.sslMode in ['verify-ca', 'verify-full']) || has(self.caSecret)").message("postgres.external.sslMode verify-ca and verify-full need caSecret"))]
pub struct PostgresExternal {
    /// Host name or address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// libpq sslmode for every connection (Tator's and the operator's checks). The default,
    /// require, always encrypts and never falls back to plain text (prefer would), so the
    /// password never crosses the network in the clear; verify-full (with caSecret) also checks
    /// the server's certificate and name, and is what production should use. verify-full is not
    /// the default because the CA of a managed database (RDS, Cloud SQL, ...) must be supplied.
    /// disable sends the password in plain text: only for a trusted network.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// Secret with the user name and password; the database is Tator's tator_online.
    pub credentials_secret: CredentialsSecret,
    /// CA certificate (PEM) the server certificate is verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
}

fn default_pg_port() -> i32 {
    5432
}

/// Redis: exactly one of inCluster or external.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inCluster) != has(self.external)").message("redis needs exactly one of inCluster or external"))]
pub struct Redis {
    /// Run Redis in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<RedisInCluster>,
    /// Use a managed Redis (ElastiCache, Memorystore, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<RedisExternal>,
}

impl Default for Redis {
    fn default() -> Self {
        Self {
            in_cluster: Some(RedisInCluster::default()),
            external: None,
        }
    }
}

/// Redis in the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisInCluster {
    /// Require a password (generated once into a Secret the operator owns).
    #[serde(default = "default_true")]
    pub auth: bool,
    /// Most memory Redis uses for data (its --maxmemory, for example 2048mb or 1gb); beyond it
    /// the least recently used keys are evicted (allkeys-lru), as Tator runs Redis. Keep the
    /// container's memory limit above it.
    #[serde(default = "default_redis_max_memory")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(b|kb|mb|gb)?$')").message("redis.inCluster.maxMemory must look like 2048mb or 2gb"))]
    #[schemars(length(min = 1, max = 16))]
    pub max_memory: String,
    /// Image, resources and placement (default image redis:7.4-alpine).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for RedisInCluster {
    fn default() -> Self {
        Self {
            auth: true,
            max_memory: default_redis_max_memory(),
            pod: PodSettings::default(),
        }
    }
}

fn default_redis_max_memory() -> String {
    "2048mb".into()
}

/// A managed Redis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.passwordSecret) || self.tls || (has(self.allowPlainTextCredentials) && self.allowPlainTextCredentials)").message("a Redis password needs tls: true (or allowPlainTextCredentials: true on a network you trust)"))]
pub struct RedisExternal {
    /// Host name or address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port.
    #[serde(default = "default_redis_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Connect with TLS (REDIS_USE_SSL).
    #[serde(default)]
    pub tls: bool,
    /// Secret key holding the password, if the server requires one. Needs `tls: true` unless
    /// allowPlainTextCredentials is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
    /// Send the password without TLS anyway (clear text): only for a network you trust.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_text_credentials: bool,
}

fn default_redis_port() -> i32 {
    6379
}

/// Elasticsearch: exactly one of inCluster or external.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inCluster) != has(self.external)").message("elasticsearch needs exactly one of inCluster or external"))]
pub struct Elasticsearch {
    /// Run Elasticsearch in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<ElasticsearchInCluster>,
    /// Use a managed Elasticsearch or OpenSearch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ElasticsearchExternal>,
}

impl Default for Elasticsearch {
    fn default() -> Self {
        Self {
            in_cluster: Some(ElasticsearchInCluster::default()),
            external: None,
        }
    }
}

/// Elasticsearch in the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ElasticsearchInCluster {
    /// Number of nodes (1 runs a single-node cluster).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 15))]
    pub replicas: i32,
    /// JVM heap (-Xms and -Xmx), for example 1g.
    #[serde(default = "default_heap")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+[mg]$')").message("elasticsearch.inCluster.heap must look like 512m or 2g"))]
    #[schemars(length(max = 8))]
    pub heap: String,
    /// The data volume of each node.
    #[serde(default = "default_es_volume")]
    pub storage: VolumeSettings,
    /// Image, resources and placement (default image docker.elastic.co/elasticsearch/elasticsearch:8.15.5).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for ElasticsearchInCluster {
    fn default() -> Self {
        Self {
            replicas: 1,
            heap: default_heap(),
            storage: default_es_volume(),
            pod: PodSettings::default(),
        }
    }
}

fn default_heap() -> String {
    "1g".into()
}

fn default_es_volume() -> VolumeSettings {
    VolumeSettings {
        size: "30Gi".into(),
        storage_class_name: None,
    }
}

/// A managed Elasticsearch or OpenSearch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.credentialsSecret) || self.url.startsWith('https://') || (has(self.allowPlainTextCredentials) && self.allowPlainTextCredentials)").message("elasticsearch.external.credentialsSecret needs an https:// url: over http:// the password crosses the network in clear text (set allowPlainTextCredentials: true only for a trusted network)"))]
pub struct ElasticsearchExternal {
    /// URL, for example https://search.example.com:9200 (ELASTICSEARCH_HOST).
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("elasticsearch.external.url must start with http:// or https://"))]
    #[schemars(length(min = 1, max = 512))]
    pub url: String,
    /// Secret with a user name and password for HTTP basic authentication, if needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecret>,
    /// CA certificate (PEM) the server certificate is verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Send the credentials over an http:// url anyway (clear text): only for a network you
    /// trust. Without it, credentialsSecret needs an https:// url.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_text_credentials: bool,
}

/// Where Tator's images come from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSettings {
    /// Registry and namespace of the Tator images, for example "cvisionai" or
    /// "registry.example.com/tator". Images are <registry>/tator_online:<tag>,
    /// <registry>/tator_ui:<tag>, <registry>/tator_postgis:<tag> and <registry>/tator_client:<tag>.
    #[serde(default = "default_registry")]
    #[schemars(length(min = 1, max = 200))]
    pub registry: String,

    /// Image tag of every Tator image, and the UI's static path (/static/<tag>). Tator tags its
    /// images with the full git commit of the release, which its REST API also serves static
    /// pages under. Leave it unset for a release the operator's catalog knows (1.5.0 is
    /// dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a). Set it to run a build or release the catalog
    /// does not know: the operator then assumes the needs of 1.5.0 (PostgreSQL 14 tools, no
    /// Elasticsearch, 1.5.0's maintenance jobs). Changing only the tag rolls the pods without
    /// running migrations: change version too when the build has new migrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_][A-Za-z0-9_.-]*$')").message("image.tag must be a container image tag such as dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a"))]
    #[schemars(length(min = 1, max = 128))]
    pub tag: Option<String>,

    /// Image pull policy of every Tator container.
    #[serde(default)]
    pub pull_policy: PullPolicy,

    /// Names of Secrets in this namespace used to pull images (also copied to job clusters).
    /// Each must list this TatorDeployment in its annotation tator.io/tator-deployments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub pull_secrets: Vec<String>,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            registry: default_registry(),
            tag: None,
            pull_policy: PullPolicy::default(),
            pull_secrets: Vec::new(),
        }
    }
}

fn default_registry() -> String {
    "cvisionai".into()
}

/// Image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// HTTPS for the NGINX entry point.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretName) || has(self.issuerRef)").message("tls needs secretName (an existing kubernetes.io/tls Secret) or issuerRef (a cert-manager issuer)"))]
pub struct TlsSettings {
    /// Name of a Secret of type kubernetes.io/tls in this namespace holding the certificate chain
    /// (tls.crt) and key (tls.key) for the domain and its aliases. With issuerRef, the Secret
    /// cert-manager writes (default: <name>-tls). A Secret of your own must list this
    /// TatorDeployment in its annotation tator.io/tator-deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,

    /// A cert-manager Issuer or ClusterIssuer: the operator creates a Certificate for the domain
    /// and its aliases. Needs cert-manager's CRDs in the cluster (otherwise the Nginx condition
    /// says CertManagerNotInstalled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,

    /// Redirect plain HTTP to HTTPS (ACME HTTP-01 challenges under /.well-known/acme-challenge/
    /// are still served over HTTP).
    #[serde(default = "default_true")]
    pub redirect_http: bool,
}

/// A cert-manager issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Issuer (in this namespace) or ClusterIssuer.
    #[serde(default)]
    pub kind: IssuerKind,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// Kind of a cert-manager issuer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IssuerKind {
    #[default]
    Issuer,
    ClusterIssuer,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issuer => "Issuer",
            Self::ClusterIssuer => "ClusterIssuer",
        }
    }
}

fn default_true() -> bool {
    true
}

/// Placement, resources and the escape hatch, shared by every component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Full image reference replacing the default image of this component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// CPU and memory requests and limits of the main container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// A PodTemplateSpec deep-merged over the generated one: the escape hatch for anything this
    /// spec does not cover. Maps merge key by key; lists of named items (containers, env,
    /// volumes, volumeMounts, ports) merge by name; other lists replace the generated list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub pod_overrides: Option<serde_json::Value>,
}

fn aliases_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": {
            "type": "string",
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
                "message": "each alias must be a lowercase DNS name"
            }]
        }
    })
}

/// The operator, not the API server, fills in an absent data service (in the cluster). A default
/// in the schema would be stored in the object, and switching to `external` with a plain
/// `kubectl apply` would then leave both set (the stored default is not in the last applied
/// configuration, so it is never removed), which the exactly-one rule refuses.
fn no_schema_default(schema: &mut Schema) {
    schema.remove("default");
}

fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The gunicorn REST API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiSettings {
    /// Number of API pods when autoscaling is off.
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// Scale the API on CPU with a HorizontalPodAutoscaler. While it is set, the operator no
    /// longer writes the Deployment's replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// gunicorn settings.
    #[serde(default)]
    pub gunicorn: Gunicorn,

    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            replicas: 2,
            autoscaling: None,
            gunicorn: Gunicorn::default(),
            pod: PodSettings::default(),
        }
    }
}

fn one() -> i32 {
    1
}
fn two() -> i32 {
    2
}

/// HorizontalPodAutoscaler settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
pub struct Autoscaling {
    /// Fewest API pods.
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most API pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) the autoscaler aims for.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// gunicorn settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Gunicorn {
    /// gunicorn worker processes per pod.
    #[serde(default = "default_gunicorn_workers")]
    #[schemars(range(min = 1, max = 64))]
    pub workers: i32,
    /// Request timeout in seconds (long uploads and exports need a generous one).
    #[serde(default = "default_gunicorn_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
}

impl Default for Gunicorn {
    fn default() -> Self {
        Self {
            workers: default_gunicorn_workers(),
            timeout_seconds: default_gunicorn_timeout(),
        }
    }
}

fn default_gunicorn_workers() -> i32 {
    3
}
fn default_gunicorn_timeout() -> i32 {
    600
}

/// Background workers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSettings {
    /// The db-worker (queue db_jobs).
    #[serde(default)]
    pub db: WorkerSettings,
    /// The image-worker (queue image_jobs).
    #[serde(default)]
    pub image: WorkerSettings,
}

/// One background worker Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSettings {
    /// Number of worker pods (0 turns the worker off). Ignored with `autoscaling`.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Scale the workers on their rq queue in Tator's Redis (opt-in): between minReplicas and
    /// maxReplicas, one per jobsPerWorker jobs waiting or running, down only after
    /// cooldownSeconds without need. Off when unset (`replicas` pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<QueueAutoscaling>,
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            autoscaling: None,
            pod: PodSettings::default(),
        }
    }
}

/// The web UI server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UiSettings {
    /// Number of UI pods.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Seconds browsers may cache the UI's static files (the UI server's --max_age). Their path
    /// carries the image tag, so a new release is fetched anew whatever the value.
    #[serde(default = "default_static_max_age")]
    #[schemars(range(min = 0, max = 31536000))]
    pub static_max_age_seconds: i32,
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for UiSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            static_max_age_seconds: default_static_max_age(),
            pod: PodSettings::default(),
        }
    }
}

fn default_static_max_age() -> i32 {
    // Tator's example environment (STATIC_MAX_AGE): 30 days.
    2_592_000
}

/// NGINX, the public entry point.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NginxSettings {
    /// Number of NGINX pods.
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// Answer every request except the health check with 503 and the maintenance page.
    #[serde(default)]
    pub maintenance: bool,

    /// The Service in front of NGINX.
    #[serde(default)]
    pub service: NginxService,

    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for NginxSettings {
    fn default() -> Self {
        Self {
            replicas: 2,
            maintenance: false,
            service: NginxService::default(),
            pod: PodSettings::default(),
        }
    }
}

/// Service type of the NGINX Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    ClusterIP,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "LoadBalancer",
            Self::NodePort => "NodePort",
            Self::ClusterIP => "ClusterIP",
        }
    }
}

/// External traffic policy of the NGINX Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::Local => "Local",
        }
    }
}

/// The Service in front of NGINX.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'LoadBalancer' || (!has(self.loadBalancerClass) && !has(self.loadBalancerIP))").message("loadBalancerClass and loadBalancerIP need service.type LoadBalancer"))]
pub struct NginxService {
    /// Service type. LoadBalancer (the default) publishes Tator through the cluster's load
    /// balancer and fills status.url from its ingress address.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Annotations for the Service (load-balancer settings of your cloud or MetalLB).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Load-balancer implementation to use (spec.loadBalancerClass). Immutable once set, as in
    /// Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub load_balancer_class: Option<String>,

    /// Address to ask the load balancer for (spec.loadBalancerIP, honoured by MetalLB and some
    /// clouds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "loadBalancerIP"
    )]
    #[schemars(length(max = 64))]
    pub load_balancer_ip: Option<String>,

    /// Cluster spreads traffic over every node; Local keeps client source addresses.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
}

/// Volumes Tator keeps files on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageSettings {
    /// The shared ReadWriteMany volume mounted by the API, workers and NGINX with the
    /// sub-folders static, media, backup and migrations. The migrations folder is persistent
    /// state Tator's future upgrades depend on: back it up.
    #[serde(default)]
    pub shared: SharedVolume,
}

/// The shared ReadWriteMany volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.existingClaim) || !has(self.storageClassName)").message("storage.shared: existingClaim and storageClassName are mutually exclusive"))]
#[x_kube(validation = Rule::new("has(self.existingClaim) == has(oldSelf.existingClaim) && (!has(self.existingClaim) || self.existingClaim == oldSelf.existingClaim)").message("storage.shared.existingClaim is immutable: changing it would detach Tator from its files"))]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storage.shared.storageClassName is immutable: changing it would replace the volume and lose its files"))]
pub struct SharedVolume {
    /// Size of the claim the operator creates (ignored with existingClaim). It can grow when
    /// the storage class allows expansion.
    #[serde(default = "default_shared_size")]
    #[schemars(length(max = 32))]
    pub size: String,

    /// Storage class of the claim the operator creates; it must support ReadWriteMany. Empty
    /// means the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,

    /// Use this existing PersistentVolumeClaim instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub existing_claim: Option<String>,
}

impl Default for SharedVolume {
    fn default() -> Self {
        Self {
            size: default_shared_size(),
            storage_class_name: None,
            existing_claim: None,
        }
    }
}

fn default_shared_size() -> String {
    "100Gi".into()
}

/// Where the first administrator's credentials are.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdminSettings {
    /// Secret in this namespace with the keys `username` and `password`, and optionally
    /// `email` (default `<username>@<domain>`). Its values never appear in the Job's arguments,
    /// logs or the status. The Secret must list this TatorDeployment in its annotation
    /// tator.io/tator-deployments.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The migrations Job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSettings {
    /// Seconds the migrations Job may run before it is failed.
    #[serde(default = "default_migration_deadline")]
    #[schemars(range(min = 60, max = 86400))]
    pub active_deadline_seconds: i64,

    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        Self {
            active_deadline_seconds: default_migration_deadline(),
            pod: PodSettings::default(),
        }
    }
}

fn default_migration_deadline() -> i64 {
    7200
}

/// Observed state of a Tator installation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TatorDeploymentStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Summary for display (Pending, Progressing, Upgrading, Ready, Degraded, Failed). Automation
    /// should read the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// The Tator version currently serving (migrated and rolled out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// The image tag the serving version runs (Tator's git commit of that release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tag: Option<String>,

    /// Where Tator answers, from the NGINX load-balancer ingress (or the domain when no ingress
    /// address is known yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Ready, Reconciling, Stalled, Migrations and one condition per component (Api, Workers,
    /// Ui, Nginx, Storage, DatabaseReady, CacheReady, ObjectStorageReady, SearchReady when
    /// Elasticsearch is in use, and LoggingReady and MonitoringReady when those stacks are
    /// enabled), each with a reason and a message. An unknown spec.version without image.tag
    /// gives Ready=False with reason UnknownRelease.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Ready and desired replicas per component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,

    /// Buckets registered in Tator from spec.buckets, with Tator's ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<RegisteredBucket>,

    /// Job clusters: their conditions, Tator's registration id and the objects created there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_clusters: Vec<JobClusterStatus>,
}

/// Ready and desired replicas of one component.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub ready: i32,
    pub desired: i32,
}

fn buckets_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<TatorBucket>>::json_schema(generator);
    schema.insert("maxItems".into(), 64.into());
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["organization", "name"]),
    );
    schema
}

fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn minimal_manifest_gets_the_documented_defaults() {
        let spec: TatorDeploymentSpec = serde_json::from_value(
            serde_json::json!({"version": "1.5.0", "domain": "t.example.com"}),
        )
        .unwrap();
        assert_eq!(spec.api.replicas, 2);
        assert_eq!(spec.api.gunicorn.workers, 3);
        assert_eq!(spec.workers.db.replicas, 1);
        assert_eq!(spec.nginx.replicas, 2);
        assert_eq!(spec.nginx.service.type_, ServiceType::LoadBalancer);
        assert_eq!(spec.image.registry, "cvisionai");
        assert!(spec.image.tag.is_none());
        assert_eq!(spec.ui.static_max_age_seconds, 2_592_000);
        let redis = spec.redis.in_cluster.as_ref().unwrap();
        assert_eq!(redis.max_memory, "2048mb");
        assert_eq!(spec.postgres.in_cluster.as_ref().unwrap().shm_size, "2Gi");
        assert_eq!(spec.storage.shared.size, "100Gi");
        assert_eq!(spec.progress_deadline_seconds, 600);
        assert!(spec.tls.is_none());
        assert!(!spec.logging.enabled && !spec.monitoring.enabled);
        assert_eq!(spec.logging.retention_days, 7);
        assert!(spec.logging.filebeat.enabled && spec.logging.kibana.enabled);
        assert!(spec.monitoring.grafana.enabled);
        assert_eq!(spec.monitoring.grafana.staff_role, GrafanaRole::Viewer);
        assert_eq!(spec.monitoring.prometheus.storage.size, "10Gi");
        assert!(!spec.maintenance.suspend && spec.maintenance.backup.enabled);
        assert_eq!(spec.maintenance.expiration_age_days, 30);
        assert_eq!(spec.maintenance.archive_age_days, 7);
        assert_eq!(spec.maintenance.successful_jobs_history_limit, 1);
        assert_eq!(spec.maintenance.failed_jobs_history_limit, 3);
    }

    #[test]
    fn crd_has_the_promised_shape() {
        let crd = TatorDeployment::crd();
        assert_eq!(crd.spec.group, "tator.io");
        assert_eq!(crd.spec.names.short_names, Some(vec!["tator".to_string()]));
        let v = &crd.spec.versions[0];
        let columns: Vec<String> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            columns,
            ["Ready", "Version", "Phase", "URL", "Age", "Message"]
        );
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let json = serde_json::to_string(&crd).unwrap();
        assert!(json.contains(r#""x-kubernetes-list-type":"map""#));
        assert!(json.contains("x-kubernetes-preserve-unknown-fields"));
    }
}
