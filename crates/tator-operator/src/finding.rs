//! What any check the operator makes found (a data service, a job cluster, object storage):
//! ok or not, a stable reason (a condition's reason) and a message for people.

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Finding {
    pub fn new(ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Self::new(true, reason, message)
    }

    pub fn not_ready(reason: &str, message: impl Into<String>) -> Self {
        Self::new(false, reason, message)
    }

    /// Not looked at yet.
    pub fn pending() -> Self {
        Self::not_ready("Pending", "not checked yet")
    }
}
