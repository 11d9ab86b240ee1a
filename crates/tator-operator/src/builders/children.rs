//! [`Children`]: every object the builders produce for one TatorDeployment, in apply order, and
//! the applied-hash annotation that lets apply tell an unchanged child from one to send.

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::{CronJob, Job},
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kube::api::DynamicObject;
use serde::Serialize;

use super::common::short_hash;

/// Annotation on every applied child: a hash of what the operator sent.
pub const APPLIED_HASH_ANNOTATION: &str = "tator.io/applied-hash";

/// Hash of an object as the operator sends it.
pub fn applied_hash<K: Serialize>(obj: &K) -> String {
    serde_json::to_vec(obj)
        .map(|b| short_hash(&b, 16))
        .unwrap_or_default()
}

/// Every child the operator applies for one TatorDeployment, in one place so that apply
/// destructures it exhaustively and nothing built can be left unapplied.
#[derive(Clone, Debug, Default)]
pub struct Children {
    /// Secrets whose values the operator composes (object storage). Compared by a read before
    /// writing, never listed or pruned (the operator may not list Secrets; owner references
    /// remove them with the installation), never printed by `render`.
    pub secrets: Vec<Secret>,
    pub service_accounts: Vec<ServiceAccount>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub claims: Vec<PersistentVolumeClaim>,
    pub config_maps: Vec<ConfigMap>,
    pub certificates: Vec<DynamicObject>,
    pub services: Vec<Service>,
    pub jobs: Vec<Job>,
    /// Tator's maintenance CronJobs.
    pub cron_jobs: Vec<CronJob>,
    pub stateful_sets: Vec<StatefulSet>,
    pub daemon_sets: Vec<DaemonSet>,
    pub deployments: Vec<Deployment>,
    pub autoscalers: Vec<HorizontalPodAutoscaler>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    /// prometheus-operator ServiceMonitors and PodMonitors (applied when its CRDs exist).
    pub service_monitors: Vec<DynamicObject>,
    pub pod_monitors: Vec<DynamicObject>,
    pub scaled_objects: Vec<DynamicObject>,
    /// Argo WorkflowTemplates (applied when Argo's CRDs exist).
    pub workflow_templates: Vec<DynamicObject>,
}

impl Children {
    /// Adds another set of children (applied after these).
    pub fn extend(&mut self, other: Children) {
        let Children {
            secrets,
            service_accounts,
            roles,
            role_bindings,
            claims,
            config_maps,
            certificates,
            services,
            jobs,
            cron_jobs,
            stateful_sets,
            daemon_sets,
            deployments,
            autoscalers,
            disruption_budgets,
            network_policies,
            service_monitors,
            pod_monitors,
            scaled_objects,
            workflow_templates,
        } = other;
        self.secrets.extend(secrets);
        self.service_accounts.extend(service_accounts);
        self.roles.extend(roles);
        self.role_bindings.extend(role_bindings);
        self.claims.extend(claims);
        self.config_maps.extend(config_maps);
        self.certificates.extend(certificates);
        self.services.extend(services);
        self.jobs.extend(jobs);
        self.cron_jobs.extend(cron_jobs);
        self.stateful_sets.extend(stateful_sets);
        self.daemon_sets.extend(daemon_sets);
        self.deployments.extend(deployments);
        self.autoscalers.extend(autoscalers);
        self.disruption_budgets.extend(disruption_budgets);
        self.network_policies.extend(network_policies);
        self.service_monitors.extend(service_monitors);
        self.pod_monitors.extend(pod_monitors);
        self.scaled_objects.extend(scaled_objects);
        self.workflow_templates.extend(workflow_templates);
    }
}

impl Children {
    /// Stamps every object with a hash of itself ([`APPLIED_HASH_ANNOTATION`]), so
    /// that apply can tell an unchanged child from one to send.
    pub fn stamp_applied_hashes(&mut self) {
        fn stamp<K: kube::Resource + serde::Serialize>(objs: &mut [K]) {
            for o in objs {
                let h = applied_hash(o);
                o.meta_mut()
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(APPLIED_HASH_ANNOTATION.into(), h);
            }
        }
        let Children {
            secrets,
            service_accounts,
            roles,
            role_bindings,
            claims,
            config_maps,
            certificates,
            services,
            jobs,
            cron_jobs,
            stateful_sets,
            daemon_sets,
            deployments,
            autoscalers,
            disruption_budgets,
            network_policies,
            service_monitors,
            pod_monitors,
            scaled_objects,
            workflow_templates,
        } = self;
        stamp(secrets);
        stamp(service_accounts);
        stamp(roles);
        stamp(role_bindings);
        stamp(claims);
        stamp(config_maps);
        stamp(certificates);
        stamp(services);
        stamp(jobs);
        stamp(cron_jobs);
        stamp(stateful_sets);
        stamp(daemon_sets);
        stamp(deployments);
        stamp(autoscalers);
        stamp(disruption_budgets);
        stamp(network_policies);
        stamp(service_monitors);
        stamp(pod_monitors);
        stamp(scaled_objects);
        stamp(workflow_templates);
    }

    /// Every object as JSON, in apply order, Secrets left out (they carry credentials).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        fn push<T: serde::Serialize>(
            out: &mut Vec<serde_json::Value>,
            objs: &[T],
        ) -> Result<(), serde_json::Error> {
            for o in objs {
                out.push(serde_json::to_value(o)?);
            }
            Ok(())
        }
        let Children {
            // Credentials: never printed (render).
            secrets: _,
            service_accounts,
            roles,
            role_bindings,
            claims,
            config_maps,
            certificates,
            services,
            jobs,
            cron_jobs,
            stateful_sets,
            daemon_sets,
            deployments,
            autoscalers,
            disruption_budgets,
            network_policies,
            service_monitors,
            pod_monitors,
            scaled_objects,
            workflow_templates,
        } = self;
        let mut out = Vec::new();
        push(&mut out, service_accounts)?;
        push(&mut out, roles)?;
        push(&mut out, role_bindings)?;
        push(&mut out, claims)?;
        push(&mut out, config_maps)?;
        push(&mut out, certificates)?;
        push(&mut out, services)?;
        push(&mut out, jobs)?;
        push(&mut out, cron_jobs)?;
        push(&mut out, stateful_sets)?;
        push(&mut out, daemon_sets)?;
        push(&mut out, deployments)?;
        push(&mut out, autoscalers)?;
        push(&mut out, disruption_budgets)?;
        push(&mut out, network_policies)?;
        push(&mut out, service_monitors)?;
        push(&mut out, pod_monitors)?;
        push(&mut out, scaled_objects)?;
        push(&mut out, workflow_templates)?;
        Ok(out)
    }
}
