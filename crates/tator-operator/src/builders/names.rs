//! Names, ports and label keys that more than one builder (or the controller) uses: component
//! names (each child's `app.kubernetes.io/component` label and the suffix of its name), the
//! ports other components connect to, and shared label keys. Constants only; imports nothing.

// The web tier (web.rs).

pub const API: &str = "api";
pub const DB_WORKER: &str = "db-worker";
pub const IMAGE_WORKER: &str = "image-worker";
pub const UI: &str = "ui";
pub const API_PORT: i32 = 8000;
pub const UI_PORT: i32 = 3000;

// NGINX (nginx.rs).

pub const NGINX: &str = "nginx";
/// Loopback-only port of NGINX's `stub_status`, read by the exporter sidecar.
pub const STUB_STATUS_PORT: i32 = 8081;

// The data tier (data.rs).

pub const POSTGRES: &str = "postgres";
pub const PGBOUNCER: &str = "pgbouncer";
pub const REDIS: &str = "redis";
pub const ELASTICSEARCH: &str = "elasticsearch";
/// Tator's database name (hard-coded in its settings).
pub const DATABASE: &str = "tator_online";
pub const REDIS_IMAGE: &str = "redis:7.4-alpine";

// The transcode path (transcodes.rs).

/// The transcode service (tator-transcode).
pub const TRANSCODE: &str = "transcode";
/// The transcode workers.
pub const TRANSCODE_WORKER: &str = "transcode-worker";
/// The queue's Redis.
pub const TRANSCODE_QUEUE: &str = "transcode-queue";
/// Port of the transcode service (its image's `uvicorn --port`) and of its Service.
pub const SERVICE_PORT: i32 = 8080;
/// Port of the queue's Redis (tator-transcode connects to Redis's default port).
pub const QUEUE_PORT: i32 = 6379;
/// The rq queue tator-transcode enqueues on.
pub const QUEUE_NAME: &str = "transcodes";

// Workflows (workflows.rs, remote.rs).

/// The ServiceAccount Tator's REST API and workers run as.
pub const API_IDENTITY: &str = "api";
/// Label on objects in job clusters: the uid of the TatorDeployment that made them.
pub const OWNER_UID_LABEL: &str = "tator.io/owner-uid";

// TLS (tls.rs).

pub const TLS: &str = "tls";
