//! What the validated spec turns on: small pure predicates that more than one builder (or the
//! controller) asks, so that none of them imports another builder for them.

use tator_api::{QueueAutoscaling, Scaler};

use super::names::TLS;
use crate::validate::ValidatedTator;

/// Whether logging runs at all.
pub fn logging_enabled(t: &ValidatedTator) -> bool {
    t.spec.logging.enabled
}

/// Whether Filebeat is wanted (logging and its own switch on).
pub fn filebeat_wanted(t: &ValidatedTator) -> bool {
    logging_enabled(t) && t.spec.logging.filebeat.enabled
}

/// Whether Kibana is wanted.
pub fn kibana_wanted(t: &ValidatedTator) -> bool {
    logging_enabled(t) && t.spec.logging.kibana.enabled
}

/// Whether monitoring runs at all.
pub fn monitoring_enabled(t: &ValidatedTator) -> bool {
    t.spec.monitoring.enabled
}

/// Whether the transcode path runs.
pub fn transcodes_enabled(t: &ValidatedTator) -> bool {
    t.spec.transcodes.enabled
}

/// Whether KEDA scales these workers: asked for, or `Auto` with KEDA's CRDs installed.
pub fn uses_keda(t: &ValidatedTator, a: &QueueAutoscaling) -> bool {
    match a.scaler {
        Scaler::Keda => true,
        Scaler::Auto => t.cluster.keda,
        Scaler::Operator => false,
    }
}

/// The Secret NGINX serves HTTPS from: the spec's, or `<name>-tls` written by cert-manager.
pub fn tls_secret_name(t: &ValidatedTator) -> Option<String> {
    let tls = t.spec.tls.as_ref()?;
    Some(tls.secret_name.clone().unwrap_or_else(|| t.child_name(TLS)))
}
