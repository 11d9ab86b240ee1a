//! One reading of a Deployment's or StatefulSet's state, from which every judgement the operator
//! makes about a workload is taken: whether a data service serves (every desired pod ready, for
//! the dependency checks) and whether a rollout is done (the component conditions of the status).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};

/// The reason of a Deployment's `Progressing` condition once its rollout stalled.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// What the API server says of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Pods asked for (the spec's replicas; else, for a Deployment, the status's; else 1).
    pub desired: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods of the current template.
    pub updated: i32,
    /// Pods of any template.
    pub total: i32,
    /// The controller has seen the current generation.
    pub observed: bool,
    /// Why the rollout stopped progressing (a Deployment past its progress deadline).
    pub stalled: Option<String>,
}

impl Workload {
    pub fn of_deployment(d: &Deployment) -> Self {
        let st = d.status.clone().unwrap_or_default();
        let stalled = st.conditions.unwrap_or_default().into_iter().find_map(|c| {
            (c.type_ == "Progressing" && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED))
                .then(|| {
                    c.message
                        .unwrap_or_else(|| "progress deadline exceeded".into())
                })
        });
        Self {
            desired: d
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(st.replicas.unwrap_or(1)),
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            total: st.replicas.unwrap_or(0),
            observed: st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0),
            stalled,
        }
    }

    pub fn of_stateful_set(s: &StatefulSet) -> Self {
        let st = s.status.clone().unwrap_or_default();
        Self {
            desired: s.spec.as_ref().and_then(|x| x.replicas).unwrap_or(1),
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            total: st.replicas,
            observed: st.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0),
            stalled: None,
        }
    }

    /// Every desired pod is ready: the service answers (what dependents wait for).
    pub fn serving(&self) -> bool {
        self.ready >= self.desired
    }

    /// The current spec is rolled out: seen by its controller, every pod updated and ready, and
    /// no pod of an older template left.
    pub fn rolled_out(&self) -> bool {
        self.observed
            && self.updated >= self.desired
            && self.ready >= self.desired
            && self.total == self.updated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn a_rollout_is_done_when_every_pod_is_new_and_ready() {
        let d = |ready: i32, updated: i32, total: i32| {
            Workload::of_deployment(&deployment(serde_json::json!({
                "metadata": {"generation": 2},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": {"observedGeneration": 2, "readyReplicas": ready,
                           "updatedReplicas": updated, "replicas": total}})))
        };
        assert!(d(2, 2, 2).rolled_out());
        // Old pods still running: serving, not rolled out.
        let surge = d(3, 2, 3);
        assert!(surge.serving() && !surge.rolled_out());
        assert!(!d(1, 2, 2).serving());
    }

    #[test]
    fn an_unobserved_generation_or_a_deadline_is_seen() {
        let w = Workload::of_deployment(&deployment(serde_json::json!({
            "metadata": {"generation": 3},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 1,
                       "replicas": 1, "conditions": [{"type": "Progressing", "status": "False",
                       "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}})));
        assert!(!w.rolled_out());
        assert_eq!(w.stalled.as_deref(), Some("too slow"));
    }

    #[test]
    fn stateful_sets_read_the_same_way() {
        let s: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"generation": 1},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "x", "template": {}},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1,
                       "replicas": 1}}))
        .unwrap_or_default();
        let w = Workload::of_stateful_set(&s);
        assert!(w.serving() && w.rolled_out());
    }
}
