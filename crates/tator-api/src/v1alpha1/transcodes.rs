//! Tator's own transcode path (1.5.0): the REST API posts each video upload to the transcode
//! service, which queues it in a Redis of its own; a pool of workers runs ffmpeg and uploads the
//! results. Argo is not involved (its WorkflowTemplates are in `workflows`).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PodSettings;

/// The transcode service, its queue and its workers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transcodes {
    /// Run the transcode path (default true). Off, video uploads fail in Tator (it has no other
    /// way to transcode); image uploads still work.
    #[serde(default = "yes")]
    pub enabled: bool,

    /// The transcode service (tator-transcode: `POST /jobs` from the REST API, which enqueues
    /// on the queue `transcodes`). Image `<registry>/tator_transcode:<tag>`.
    #[serde(default)]
    pub service: TranscodeService,

    /// The workers (`rq worker transcodes` in the tator_client image: tator-py's transcoder and
    /// ffmpeg). Image `<registry>/tator_client:<tag>`.
    #[serde(default)]
    pub workers: TranscodeWorkers,

    /// The queue: a Redis of its own, without a password because tator-transcode connects with
    /// none, reachable only from the service and the workers (a NetworkPolicy). It holds each
    /// job's arguments, the uploading user's API token included, and nothing else of Tator.
    #[serde(default)]
    pub queue: TranscodeQueue,
}

impl Default for Transcodes {
    fn default() -> Self {
        Self {
            enabled: true,
            service: TranscodeService::default(),
            workers: TranscodeWorkers::default(),
            queue: TranscodeQueue::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// The transcode service Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TranscodeService {
    /// Number of service pods.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for TranscodeService {
    fn default() -> Self {
        Self {
            replicas: 1,
            pod: PodSettings::default(),
        }
    }
}

/// The transcode worker Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TranscodeWorkers {
    /// Number of worker pods; each runs one transcode at a time. Ignored with `autoscaling`.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Scale the workers on the queue: between minReplicas (0: none while idle) and
    /// maxReplicas, one per jobsPerWorker jobs waiting or running, down only after
    /// cooldownSeconds without need. Off when unset (`replicas` pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<QueueAutoscaling>,

    /// Scratch space of each worker (an emptyDir at /tmp holding the download and ffmpeg's
    /// output): about 2.5 times the largest upload. Default 20Gi.
    #[serde(default = "default_scratch")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(Ki|Mi|Gi|Ti)$')").message("scratchSize is a binary quantity such as 20Gi"))]
    #[schemars(length(max = 16))]
    pub scratch_size: String,

    /// Resources default to requests of 1 CPU and 1Gi, a limit of 8Gi.
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for TranscodeWorkers {
    fn default() -> Self {
        Self {
            replicas: 1,
            autoscaling: None,
            scratch_size: default_scratch(),
            pod: PodSettings::default(),
        }
    }
}

fn one() -> i32 {
    1
}

fn default_scratch() -> String {
    "20Gi".into()
}

/// The queue's Redis (one pod; the queue survives restarts of its container, not of its pod).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TranscodeQueue {
    #[serde(flatten)]
    pub pod: PodSettings,
}

/// Workers that follow the length of their queue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct QueueAutoscaling {
    /// Workers while the queue is empty (0 stops them all).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,

    /// Most workers at once.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Jobs (waiting or running) per worker.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub jobs_per_worker: i32,

    /// Seconds without need before workers are removed (scaling up is immediate).
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_seconds: i32,

    /// Who scales: `Auto` (KEDA when its CRDs are installed, else the operator), `Keda` (a
    /// ScaledObject; waits for KEDA's CRDs) or `Operator` (the operator reads the queue).
    #[serde(default)]
    pub scaler: Scaler,
}

fn default_max() -> i32 {
    4
}

fn default_cooldown() -> i32 {
    300
}

/// Who scales queue workers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scaler {
    #[default]
    Auto,
    Keda,
    Operator,
}
