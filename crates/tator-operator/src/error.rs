//! Errors of the reconcile pipeline, each with a stable category for metrics and Events.

use kube::runtime::controller::Action;

/// An error from one stage of the reconcile pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be turned into a deployment; waits for a change of the spec.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// spec.version is a release the catalog does not know and spec.image.tag is not set: the
    /// operator cannot tell which images to run. Waits for a change of the spec.
    #[error("{0}")]
    UnknownRelease(String),

    /// Reading the cluster failed.
    #[error("could not read {what}: {}", brief(.source))]
    Fetch {
        what: String,
        #[source]
        source: kube::Error,
    },

    /// Server-side apply of a child failed.
    #[error("could not apply {kind} {name}: {}", brief(.source))]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// Deleting an orphaned child failed.
    #[error("could not delete orphaned {kind} {name}: {}", brief(.source))]
    Prune {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },

    /// Writing the status failed.
    #[error("could not write status: {}", brief(.0))]
    Status(#[source] kube::Error),

    /// The reconcile did not finish within its deadline (something it waited on hung); retried.
    #[error("the reconcile did not finish within {0} s; retrying")]
    Deadline(u64),

    /// An object could not be serialized (a bug).
    #[error("could not serialize {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A Kubernetes client error for people: the API server's message (its Display repeats the
/// whole status structure), or the transport error.
pub fn brief(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

impl Error {
    /// Every value [`Self::category`] returns.
    pub const CATEGORIES: &'static [&'static str] = &[
        "InvalidSpec",
        "UnknownRelease",
        "FetchFailed",
        "ApplyFailed",
        "PruneFailed",
        "StatusFailed",
        "SerializeFailed",
        "DeadlineExceeded",
    ];

    /// A stable, low-cardinality name for metrics labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::UnknownRelease(_) => "UnknownRelease",
            Self::Fetch { .. } => "FetchFailed",
            Self::Apply { .. } => "ApplyFailed",
            Self::Prune { .. } => "PruneFailed",
            Self::Status(_) => "StatusFailed",
            Self::Serialize { .. } => "SerializeFailed",
            Self::Deadline(_) => "DeadlineExceeded",
        }
    }

    /// Permanent errors wait for the user to change the spec; the rest are retried.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::InvalidSpec(_) | Self::UnknownRelease(_) | Self::Serialize { .. }
        )
    }

    /// The API server refused an object as invalid (400, 422): retrying the same object cannot
    /// succeed, so the status says Stalled (the operator still retries, as an admission webhook
    /// or a quota may change).
    pub fn refused(&self) -> bool {
        match self {
            Self::Apply { source, .. } | Self::Prune { source, .. } => {
                matches!(source, kube::Error::Api(s) if s.code == 400 || s.code == 422)
            }
            _ => false,
        }
    }

    /// What the controller does after this error, given how many times in a row it failed.
    pub fn action(&self, consecutive_failures: u32) -> Action {
        if self.is_permanent() {
            return Action::await_change();
        }
        let exp = consecutive_failures.min(6);
        let secs = (1u64 << exp).min(300);
        Action::requeue(std::time::Duration::from_secs(secs))
    }
}
