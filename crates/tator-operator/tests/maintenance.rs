//! Maintenance CronJobs on the real local control plane: the defaults once Tator is migrated,
//! CronJobs edited, relabelled or deleted by hand repaired, schedule overrides and suspension
//! reaching the live CronJobs, and the cronjob controller of the kube-controller-manager creating
//! a Job from one of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tator_api::TatorDeployment;
use tator_operator::builders::maintenance::{JOB_LABEL, JOBS};
use tator_testbed::support::{namespace, wait_for};

/// `(schedule, suspend)` of every maintenance CronJob, by job name.
async fn live(api: &Api<CronJob>) -> Result<Vec<(String, String, bool)>, String> {
    let list = api
        .list(&ListParams::default().labels("app.kubernetes.io/component=maintenance"))
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<(String, String, bool)> = list
        .items
        .iter()
        .map(|c| {
            let s = c.spec.clone().unwrap();
            (
                c.labels()[JOB_LABEL].clone(),
                s.schedule,
                s.suspend.unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_jobs_follow_the_spec_and_a_due_one_creates_a_job() {
    let client = common::cluster().await;
    let ns = namespace(&client, "op-maintenance", true).await.unwrap();
    let (ctx, task) = common::start_controller(&client, &ns);
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"}, "spec": {"version": "1.5.0", "domain": "tator.example.com"}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();

    // Defaults, once the release is migrated: every job but move-backups (no backup bucket).
    let expected: Vec<(String, String, bool)> = {
        let mut v: Vec<_> = JOBS
            .iter()
            .filter(|j| j.name != "move-backups")
            .map(|j| (j.name.to_string(), j.schedule.to_string(), false))
            .collect();
        v.sort();
        v
    };
    wait_for(
        "the maintenance CronJobs with their default schedules",
        Duration::from_secs(120),
        || async {
            let have = live(&cron_jobs).await?;
            (have == expected).then_some(()).ok_or(format!("{have:?}"))
        },
    )
    .await
    .unwrap();
    let sizer = cron_jobs.get("tator-sizer").await.unwrap();
    let s = sizer.spec.as_ref().unwrap();
    assert_eq!(s.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(s.successful_jobs_history_limit, Some(1));
    assert_eq!(s.failed_jobs_history_limit, Some(3));
    let owner = &sizer.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("TatorDeployment", Some(true))
    );

    // Edited by hand: the operator keeps CronJobs as metadata only and tells a spec edit by its
    // generation, a metadata edit by the labels, and a deletion by the watch.
    cron_jobs
        .patch(
            "tator-sizer",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(json!({"apiVersion": "batch/v1", "kind": "CronJob",
                "spec": {"schedule": "5 5 * * *"}})),
        )
        .await
        .unwrap();
    cron_jobs
        .patch(
            "tator-prune-states",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/component": null}}})),
        )
        .await
        .unwrap();
    let old_uid = cron_jobs.get("tator-prune-files").await.unwrap().uid();
    cron_jobs
        .delete("tator-prune-files", &Default::default())
        .await
        .unwrap();
    wait_for(
        "the edited, relabelled and deleted CronJobs repaired",
        Duration::from_secs(15),
        || async {
            let sizer = cron_jobs
                .get("tator-sizer")
                .await
                .map_err(|e| e.to_string())?;
            let states = cron_jobs
                .get("tator-prune-states")
                .await
                .map_err(|e| e.to_string())?;
            let token = cron_jobs
                .get_opt("tator-prune-files")
                .await
                .map_err(|e| e.to_string())?;
            let schedule = sizer.spec.map(|s| s.schedule).unwrap_or_default();
            let labelled = states.labels().contains_key("app.kubernetes.io/component");
            let recreated = token.is_some_and(|t| t.uid() != old_uid);
            (schedule == "10 * * * *" && labelled && recreated)
                .then_some(())
                .ok_or(format!(
                    "schedule {schedule}, labelled {labelled}, recreated {recreated}"
                ))
        },
    )
    .await
    .unwrap();

    let patch = |spec: serde_json::Value| {
        let tds = tds.clone();
        async move {
            tds.patch(
                "tator",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
        }
    };
    let one = |name: &'static str| {
        let cron_jobs = cron_jobs.clone();
        move || {
            let cron_jobs = cron_jobs.clone();
            async move {
                let c = cron_jobs
                    .get(&format!("tator-{name}"))
                    .await
                    .map_err(|e| e.to_string())?;
                let s = c.spec.unwrap();
                Ok::<_, String>((s.schedule, s.suspend.unwrap_or(false)))
            }
        }
    };

    // One schedule overridden, another job suspended; the rest untouched.
    patch(json!({"maintenance": {"jobs": {
        "prune-media": {"schedule": "15 4 * * 0"},
        "sizer": {"suspend": true}
    }}}))
    .await;
    wait_for(
        "prune-media rescheduled and sizer suspended",
        Duration::from_secs(30),
        || async {
            let media = one("prune-media")().await?;
            let sizer = one("sizer")().await?;
            let states = one("prune-states")().await?;
            (media == ("15 4 * * 0".to_string(), false)
                && sizer == ("10 * * * *".to_string(), true)
                && states == ("30 2 * * *".to_string(), false))
                .then_some(())
                .ok_or(format!("{media:?} {sizer:?} {states:?}"))
        },
    )
    .await
    .unwrap();

    // Everything suspended at once.
    patch(json!({"maintenance": {"suspend": true}})).await;
    wait_for(
        "every CronJob suspended",
        Duration::from_secs(30),
        || async {
            let have = live(&cron_jobs).await?;
            (have.len() == expected.len() && have.iter().all(|(_, _, s)| *s))
                .then_some(())
                .ok_or(format!("{have:?}"))
        },
    )
    .await
    .unwrap();

    // A job due every minute and no longer suspended: the cronjob controller starts a Job
    // owned by its CronJob.
    patch(json!({"maintenance": {"suspend": false, "jobs": {
        "sizer": null,
        "expire-invitations": {"schedule": "* * * * *", "suspend": false}
    }}}))
    .await;
    wait_for(
        "expire-invitations due every minute",
        Duration::from_secs(30),
        || async {
            let e = one("expire-invitations")().await?;
            (e == ("* * * * *".to_string(), false))
                .then_some(())
                .ok_or(format!("{e:?}"))
        },
    )
    .await
    .unwrap();
    let uid = cron_jobs
        .get("tator-expire-invitations")
        .await
        .unwrap()
        .uid()
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = wait_for(
        "a Job from tator-expire-invitations",
        Duration::from_secs(100),
        || async {
            let list = jobs
                .list(&ListParams::default().labels(&format!("{JOB_LABEL}=expire-invitations")))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|j| {
                    j.owner_references()
                        .iter()
                        .any(|o| o.uid == uid && o.controller == Some(true))
                })
                .ok_or_else(|| "no Job yet".to_string())
        },
    )
    .await
    .unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].command.clone().unwrap(),
        ["python3", "manage.py", "expireinvitations"]
    );
    // The operator does not treat the cronjob controller's Jobs as its own orphans: a reconcile
    // after the Job exists keeps it.
    common::poke_and_settle(&ctx, &client, &ns, "tator").await;
    assert!(
        jobs.get_opt(&job.metadata.name.unwrap())
            .await
            .unwrap()
            .is_some()
    );

    // Nothing is suspended any more.
    let have = live(&cron_jobs).await.unwrap();
    assert!(have.iter().all(|(_, _, s)| !s), "{have:?}");
    task.abort();
}
