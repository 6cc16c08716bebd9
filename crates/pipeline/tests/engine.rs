//! The release engine alone: `Engine::tick` over the in-memory fakes of `pipeline::testing`,
//! time moved by hand. No process, git, queue server or waiting for timeouts.

use std::time::Duration;

use coalmine_pipeline::store::status;
use coalmine_pipeline::testing::{Fixture, Health};
use coalmine_pipeline::PipelineError;
use coalmine_spec::{ServiceName, Step};

fn fixture() -> (tempfile::TempDir, Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::new(dir.path()).unwrap();
    (dir, f)
}

/// Bootstrap, then push a second commit and tick until it waits for approval; returns
/// (first revision, second commit's execution id, second revision).
fn canary_awaiting(f: &Fixture) -> (String, i64, String) {
    let first = f.bootstrap().unwrap().revision();
    let c = f.commit("second version");
    f.tick_until("the second release to await approval", |f| {
        f.execution_of(&c).unwrap().is_some_and(|e| f.is_awaiting(e.id))
    })
    .unwrap();
    let id = f.execution_of(&c).unwrap().unwrap().id;
    (first, id, c.revision())
}

/// Tick `n` times, the clock moving `step` before each.
fn ticks(f: &Fixture, n: usize, step: Duration) {
    for _ in 0..n {
        f.clock.advance(step);
        f.tick().unwrap();
    }
}

/// Events of an execution that end it.
fn end_events(f: &Fixture, id: i64) -> Vec<String> {
    f.store()
        .unwrap()
        .events(Some(id), u32::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| ["succeeded", "failed", "rolledback", "superseded", "stopped"].contains(&e.kind.as_str()))
        .map(|e| format!("{}: {}", e.kind, e.reason))
        .collect()
}

fn refused<T: std::fmt::Debug>(r: Result<T, PipelineError>) -> String {
    match r {
        Err(PipelineError::Refused(msg)) => msg,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bootstrap_release_runs_to_succeeded() {
    let (_dir, f) = fixture();
    let c = f.bootstrap().unwrap();
    let rev = c.revision();
    let exec = f.execution_of(&c).unwrap().unwrap();
    assert_eq!(exec.status, status::SUCCEEDED);
    assert!(exec.bootstrap);
    let stages: Vec<(String, String)> =
        f.store().unwrap().stages(exec.id).unwrap().into_iter().map(|s| (s.name, s.status.to_string())).collect();
    let ok = status::SUCCEEDED.to_string();
    assert_eq!(
        stages,
        vec![
            ("Source".into(), ok.clone()),
            ("Build".into(), ok.clone()),
            ("Deploy canary".into(), ok.clone()),
            ("Deploy primary".into(), ok.clone()),
        ],
        "the first release deploys both services, with no approval"
    );
    assert_eq!(f.primary_revision().as_deref(), Some(rev.as_str()));
    for (service, tasks) in [("primary", 3), ("canary", 1)] {
        assert_eq!(f.desired_revision(service).as_deref(), Some(rev.as_str()));
        let st = f.engine.runtime().service(service).unwrap();
        assert_eq!((st.revision.as_str(), st.running, st.steady), (rev.as_str(), tasks, true));
    }
    // The build's artifact folder holds the commit's files, and the services run it.
    let artifact = f.paths.artifacts(&rev);
    assert_eq!(std::fs::read_to_string(artifact.join("REVISION")).unwrap(), c.id);
    assert_eq!(f.engine.runtime().spec("primary").unwrap().revision.artifact.dir, artifact);
    assert_eq!(f.source.checkouts(), vec![c.id.clone()]);
    assert_eq!(end_events(&f, exec.id).len(), 1);
}

#[test]
fn new_commit_deploys_the_canary_and_waits_for_approval() {
    let (_dir, f) = fixture();
    let (first, id, second) = canary_awaiting(&f);
    assert_eq!(f.running_revision("canary").as_deref(), Some(second.as_str()));
    assert_eq!(f.running_revision("primary").as_deref(), Some(first.as_str()));
    assert_eq!(f.stage_status(id, "Deploy canary").unwrap(), Some(status::SUCCEEDED));
    assert_eq!(f.stage_status(id, "Approval").unwrap(), Some(status::IN_PROGRESS));
    // It waits: a day of ticks changes nothing.
    ticks(&f, 24, Duration::from_secs(3600));
    assert!(f.is_awaiting(id));
    assert_eq!(f.stage_status(id, "Deploy primary").unwrap(), Some(status::PENDING));
    assert_eq!(f.primary_revision().as_deref(), Some(first.as_str()));
    assert_eq!(f.running_revision("primary").as_deref(), Some(first.as_str()));
}

#[test]
fn approval_promotes_the_revision_it_names_and_no_other() {
    let (_dir, f) = fixture();
    let (first, stale, second) = canary_awaiting(&f);
    // A newer commit supersedes the execution awaiting approval.
    let c3 = f.commit("third version");
    f.tick_until("the third release to start", |f| f.execution_of(&c3).unwrap().is_some()).unwrap();
    let third = c3.revision();
    let id3 = f.execution_of(&c3).unwrap().unwrap().id;
    assert_eq!(f.execution(stale).unwrap().status, status::SUPERSEDED);
    // Approving the superseded execution is refused and records nothing.
    let msg = refused(f.engine.decide(stale, true, "alice", "looks good"));
    assert!(msg.contains(&second) && msg.contains("Superseded"), "{msg}");
    assert!(f.store().unwrap().approvals(stale).unwrap().is_empty());
    // So is approving the new one before it reaches its approval stage.
    let msg = refused(f.engine.decide(id3, true, "alice", ""));
    assert!(msg.contains("not waiting for approval"), "{msg}");
    assert!(f.store().unwrap().approvals(id3).unwrap().is_empty());
    f.tick_until("the third release to await approval", |f| f.is_awaiting(id3)).unwrap();
    assert_eq!(f.primary_revision().as_deref(), Some(first.as_str()), "nothing was promoted by the refused approvals");
    // The approval of the third applies to the third.
    let approved = f.engine.decide(id3, true, "alice", "").unwrap();
    assert_eq!(approved.revision, third);
    f.tick_until("the third release to succeed", |f| f.execution(id3).unwrap().status == status::SUCCEEDED).unwrap();
    assert_eq!(f.primary_revision().as_deref(), Some(third.as_str()));
    assert_eq!(f.running_revision("primary").as_deref(), Some(third.as_str()));
    assert_eq!(f.running_revision("canary").as_deref(), Some(third.as_str()));
    let approvals = f.store().unwrap().approvals(id3).unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!((approvals[0].revision.as_str(), approvals[0].decision.as_str()), (third.as_str(), "approved"));
    // And once it has ended, it cannot be decided again.
    refused(f.engine.decide(id3, false, "bob", ""));
    assert!(f.store().unwrap().approvals(stale).unwrap().is_empty());
}

#[test]
fn rejection_rolls_the_canary_back() {
    let (_dir, f) = fixture();
    let (first, id, _) = canary_awaiting(&f);
    f.engine.decide(id, false, "bob", "no").unwrap();
    f.tick_until("the rejection to end the execution", |f| f.has_ended(id)).unwrap();
    let exec = f.execution(id).unwrap();
    assert_eq!(exec.status, status::ROLLED_BACK);
    assert!(exec.reason.contains("rejected by bob"), "{}", exec.reason);
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()));
    assert_eq!(f.primary_revision().as_deref(), Some(first.as_str()));
}

#[test]
fn alarm_rolls_the_canary_back_once_and_gives_its_messages_back() {
    let (_dir, f) = fixture();
    let (first, id, second) = canary_awaiting(&f);
    let bad = f.canary_key(&second).expect("a canary task runs the second revision");
    // The primary works; the canary fails 5 messages in a row (2 of them dead-lettered) and
    // holds 2 more.
    for key in f.runtime.task_keys("primary") {
        f.queue.process(&key, 10, 0);
    }
    f.queue.process(&bad, 0, 3);
    f.queue.send(4);
    f.queue.receive(&bad, 4);
    f.queue.fail_to_dlq(&bad, 2);
    assert_eq!(f.queue.held_by(&bad), 2);
    ticks(&f, 1, Duration::from_secs(1));

    let exec = f.execution(id).unwrap();
    assert_eq!(exec.status, status::ROLLED_BACK, "{}", exec.reason);
    assert!(exec.reason.starts_with("alarm failure-ratio"), "{}", exec.reason);
    assert_eq!(f.desired_revision("canary").as_deref(), Some(first.as_str()));
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()), "the canary is back on the primary's revision");
    let applied = f.runtime.applied().into_iter().rfind(|s| s.name == "canary").unwrap();
    assert_eq!(applied.minimum_healthy_percent, 0, "the bad tasks stop at once");
    assert_eq!(applied.stop_timeout, f.spec.run.rollback_stop_timeout, "an alarm's rollback gives the short grace");
    assert_eq!(f.primary_revision().as_deref(), Some(first.as_str()));
    let finished = exec.finished_ms;

    // Later ticks follow the rollback, and do not end the execution again.
    ticks(&f, 5, Duration::from_secs(3));
    let exec = f.execution(id).unwrap();
    assert_eq!((exec.status, exec.finished_ms), (status::ROLLED_BACK, finished));
    assert_eq!(end_events(&f, id).len(), 1, "{:?}", end_events(&f, id));
    let rollbacks = f.store().unwrap().rollbacks(Some(id)).unwrap();
    assert_eq!(rollbacks.len(), 1);
    let rb = &rollbacks[0];
    assert_eq!((rb.revision.as_str(), rb.to_revision.as_str(), rb.actor.as_str()), (second.as_str(), first.as_str(), "alarm:failure-ratio"));
    assert!(rb.canary_back_ms.is_some());
    assert_eq!((rb.received, rb.returned, rb.expired, rb.released, rb.failed), (7, 5, 0, 2, 7));
    assert_eq!((rb.dead_lettered, rb.redriven, rb.lost), (2, 2, 0));
    // What the bad revision held or dead-lettered is back in the queue; nothing was lost.
    let t = f.queue.totals();
    assert_eq!((t.in_flight, t.dead, t.visible), (0, 0, 7), "{t:?}");
    assert!(t.conserved(), "{t:?}");
    refused(f.engine.decide(id, true, "alice", ""));
}

#[test]
fn a_rolled_back_canarys_dead_letters_go_back_only_once_its_tasks_are_gone() {
    let (_dir, f) = fixture();
    let (first, id, second) = canary_awaiting(&f);
    let bad = f.canary_key(&second).expect("a canary task runs the second revision");
    for key in f.runtime.task_keys("primary") {
        f.queue.process(&key, 10, 0);
    }
    // The bad canary's task takes its time to stop (its grace).
    f.runtime.linger_on_stop("canary");
    f.queue.process(&bad, 0, 3);
    f.queue.send(2);
    f.queue.receive(&bad, 2);
    f.queue.fail_to_dlq(&bad, 2);
    ticks(&f, 1, Duration::from_secs(1));
    assert_eq!(f.execution(id).unwrap().status, status::ROLLED_BACK);
    assert_eq!(f.desired_revision("canary").as_deref(), Some(first.as_str()));

    // While a task of the bad revision still runs, its dead letters stay in the DLQ: redriven
    // now, one could be received and failed by it again.
    ticks(&f, 3, Duration::from_secs(1));
    let rb = f.store().unwrap().rollbacks(Some(id)).unwrap().remove(0);
    assert_eq!((rb.redriven, rb.canary_back_ms), (0, None), "{rb:?}");
    assert_eq!(f.queue.totals().dead, 2);

    // Once it is gone, they go back.
    assert_eq!(f.runtime.finish_stopping("canary"), 1);
    ticks(&f, 1, Duration::from_secs(1));
    let rb = f.store().unwrap().rollbacks(Some(id)).unwrap().remove(0);
    assert!(rb.canary_back_ms.is_some(), "{rb:?}");
    assert_eq!((rb.dead_lettered, rb.redriven, rb.lost), (2, 2, 0), "{rb:?}");
    let t = f.queue.totals();
    assert_eq!(t.dead, 0, "{t:?}");
    assert!(t.conserved(), "{t:?}");
}

#[test]
fn messages_a_stopped_task_handed_back_come_back_from_the_dlq_and_failures_stay() {
    let (_dir, f) = fixture();
    let (_first, id, _second) = canary_awaiting(&f);
    let primary = f.runtime.task_keys("primary").remove(0);
    // A primary task fails one message to the DLQ, and stops holding three more: on SQS its
    // proxy hands them back and the next receive dead-letters them (a max receive count of 1).
    f.queue.send(4);
    f.queue.receive(&primary, 4);
    f.queue.fail_to_dlq(&primary, 1);
    f.queue.release_to_dlq(&primary, 3);
    assert_eq!(f.queue.totals().dead, 4);
    ticks(&f, 2, Duration::from_secs(6));
    let t = f.queue.totals();
    assert_eq!((t.dead, t.visible), (1, 3), "the three released go back, the failure stays: {t:?}");
    assert!(t.conserved(), "{t:?}");
    assert!(f.is_awaiting(id), "nothing else changed");
    let said = f.store().unwrap().events(None, u32::MAX).unwrap().into_iter().any(|e| e.kind == "redrive" && e.reason.starts_with("redrove 3 message(s)"));
    assert!(said, "the redrive is in the events");
}

/// A canary awaiting approval whose task stopped holding two messages, handed back by its
/// proxy and dead-lettered at their next receive; they stay there while the canary is judged.
fn canary_hands_back_two_to_the_dlq(f: &Fixture) -> (String, i64) {
    let (first, id, second) = canary_awaiting(f);
    let canary = f.canary_key(&second).expect("a canary task runs the second revision");
    f.queue.send(2);
    f.queue.receive(&canary, 2);
    f.queue.release_to_dlq(&canary, 2);
    ticks(f, 3, Duration::from_secs(6));
    assert!(f.is_awaiting(id), "{}", f.execution(id).unwrap().reason);
    assert_eq!(f.queue.totals().dead, 2, "not redriven while the canary is judged");
    (first, id)
}

#[test]
fn a_judged_canarys_handed_back_messages_wait_in_the_dlq_for_the_verdict() {
    // A canary task crashes holding two messages; its proxy hands them back and the next
    // receive dead-letters them. While the canary is judged they stay: its rollback redrives
    // them and its report counts them, nothing lost.
    let (_dir, f) = fixture();
    let (first, id) = canary_hands_back_two_to_the_dlq(&f);
    f.engine.rollback("alice", "not this one").unwrap();
    ticks(&f, 3, Duration::from_secs(6));
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()));
    let rb = f.store().unwrap().rollbacks(Some(id)).unwrap().remove(0);
    assert_eq!((rb.released, rb.dead_lettered, rb.redriven, rb.lost), (2, 2, 2, 0), "{rb:?}");
    let t = f.queue.totals();
    assert_eq!((t.dead, t.visible), (0, 2), "{t:?}");
    assert!(t.conserved(), "{t:?}");
}

#[test]
fn an_approved_canarys_handed_back_messages_come_back_from_the_dlq() {
    let (_dir, f) = fixture();
    let (_, id) = canary_hands_back_two_to_the_dlq(&f);
    f.engine.decide(id, true, "alice", "").unwrap();
    f.tick_until("the release to succeed", |f| f.execution(id).unwrap().status == status::SUCCEEDED).unwrap();
    ticks(&f, 2, Duration::from_secs(6));
    let t = f.queue.totals();
    assert_eq!((t.dead, t.visible), (0, 2), "once its revision is the primary's, they go back: {t:?}");
}

#[test]
fn a_healthy_canarys_old_failures_expiring_in_a_quiet_queue_do_not_roll_it_back() {
    // A worker that leaves its failed messages: the canary holds 3 failed ones while it
    // processes the rest like the primary; then the traffic stops, and one visibility timeout
    // later the 3 expire one after another with nothing received since.
    let (_dir, f) = fixture();
    let (_, id, second) = canary_awaiting(&f);
    let canary = f.canary_key(&second).expect("a canary task runs the second revision");
    f.queue.send(3);
    assert_eq!(f.queue.receive(&canary, 3), 3);
    f.queue.process(&canary, 200, 0);
    for key in f.runtime.task_keys("primary") {
        f.queue.process(&key, 200, 4);
    }
    ticks(&f, 2, Duration::from_secs(1));
    assert!(f.is_awaiting(id), "{}", f.execution(id).unwrap().reason);
    ticks(&f, 5, Duration::from_secs(60));
    assert!(f.is_awaiting(id), "{}", f.execution(id).unwrap().reason);
    for _ in 0..3 {
        assert_eq!(f.queue.expire(&canary, 1), 1);
        ticks(&f, 1, Duration::from_secs(1));
    }
    assert!(f.is_awaiting(id), "old failures expiring read as a run of fresh ones: {}", f.execution(id).unwrap().reason);
}

#[test]
fn crash_looping_canary_is_rolled_back() {
    let (_dir, f) = fixture();
    let (first, id, _) = canary_awaiting(&f);
    for _ in 0..3 {
        assert_eq!(f.runtime.exit_tasks("canary"), 1);
    }
    ticks(&f, 1, Duration::from_secs(1));
    let exec = f.execution(id).unwrap();
    assert_eq!(exec.status, status::ROLLED_BACK);
    assert!(exec.reason.starts_with("alarm crashes"), "{}", exec.reason);
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()));
    ticks(&f, 3, Duration::from_secs(1));
    assert_eq!(end_events(&f, id).len(), 1);
}

#[test]
fn approval_times_out_on_the_clock() {
    let (_dir, f) = fixture();
    let (first, id, _) = canary_awaiting(&f);
    ticks(&f, 1, Duration::from_secs(7 * 86_400 - 60));
    assert!(f.is_awaiting(id), "not yet 7 days");
    ticks(&f, 1, Duration::from_secs(120));
    let exec = f.execution(id).unwrap();
    assert_eq!(exec.status, status::ROLLED_BACK);
    assert_eq!(exec.reason, "approval timed out after 7d");
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()));
}

#[test]
fn deploy_times_out_on_the_clock() {
    let (_dir, f) = fixture();
    let first = f.bootstrap().unwrap().revision();
    f.runtime.set_service_health("canary", Health::Manual);
    let c = f.commit("never healthy");
    f.tick_until("the canary deploy to start", |f| {
        f.execution_of(&c).unwrap().is_some_and(|e| f.stage_status(e.id, "Deploy canary").unwrap() == Some(status::IN_PROGRESS))
    })
    .unwrap();
    let id = f.execution_of(&c).unwrap().unwrap().id;
    ticks(&f, 1, Duration::from_secs(600));
    assert_eq!(f.stage_status(id, "Deploy canary").unwrap(), Some(status::IN_PROGRESS), "10 min is the limit, not past it");
    ticks(&f, 1, Duration::from_secs(1));
    let exec = f.execution(id).unwrap();
    assert_eq!(exec.status, status::FAILED);
    assert!(exec.reason.contains("did not reach steady state") && exec.reason.contains("10m"), "{}", exec.reason);
    assert_eq!(f.stage_status(id, "Deploy canary").unwrap(), Some(status::FAILED));
    assert_eq!(f.desired_revision("canary").as_deref(), Some(first.as_str()));
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()));
    assert_eq!(f.store().unwrap().rollbacks(Some(id)).unwrap().len(), 1, "a failed canary is a rollback too");
}

#[test]
fn failed_canary_deployment_fails_the_execution() {
    let (_dir, f) = fixture();
    let first = f.bootstrap().unwrap().revision();
    f.runtime.set_service_health("canary", Health::Manual);
    let c = f.commit("breaks at start");
    f.tick_until("the canary deploy to start", |f| {
        f.execution_of(&c).unwrap().is_some_and(|e| f.stage_status(e.id, "Deploy canary").unwrap() == Some(status::IN_PROGRESS))
    })
    .unwrap();
    let id = f.execution_of(&c).unwrap().unwrap().id;
    assert!(f.runtime.fail_deployment("canary", "circuit breaker: 3 task launches failed"));
    ticks(&f, 1, Duration::from_secs(1));
    let exec = f.execution(id).unwrap();
    assert_eq!(exec.status, status::FAILED);
    assert!(exec.reason.contains("circuit breaker"), "{}", exec.reason);
    assert_eq!(f.desired_revision("canary").as_deref(), Some(first.as_str()));
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()));
}

#[test]
fn failed_build_fails_the_execution_and_leaves_the_services() {
    let (_dir, f) = fixture();
    let first = f.bootstrap().unwrap().revision();
    let c = f.source.push("does not compile");
    f.builder.fail_revision(&c.revision(), Some("error[E0308]: mismatched types"));
    f.engine.trigger();
    f.tick_until("the build to fail", |f| f.execution_of(&c).unwrap().is_some_and(|e| f.has_ended(e.id))).unwrap();
    let exec = f.execution_of(&c).unwrap().unwrap();
    assert_eq!(exec.status, status::FAILED);
    assert!(exec.reason.contains("mismatched types"), "{}", exec.reason);
    assert_eq!(f.running_revision("canary").as_deref(), Some(first.as_str()));
    assert!(f.store().unwrap().rollbacks(Some(exec.id)).unwrap().is_empty(), "the canary never ran it");
}

#[test]
fn restart_resumes_an_execution_awaiting_approval() {
    let (_dir, mut f) = fixture();
    let (first, id, second) = canary_awaiting(&f);
    let builds = f.builder.builds().len();
    f.restart().unwrap();
    ticks(&f, 5, Duration::from_secs(1));
    assert!(f.is_awaiting(id));
    assert_eq!(f.builder.builds().len(), builds, "nothing is rebuilt");
    assert_eq!(f.store().unwrap().executions(100).unwrap().len(), 2, "no new execution");
    assert_eq!(f.running_revision("canary").as_deref(), Some(second.as_str()));
    assert_eq!(f.running_revision("primary").as_deref(), Some(first.as_str()));
    f.engine.decide(id, true, "alice", "").unwrap();
    f.tick_until("the release to succeed", |f| f.execution(id).unwrap().status == status::SUCCEEDED).unwrap();
    assert_eq!(f.primary_revision().as_deref(), Some(second.as_str()));
}

#[test]
fn restart_with_an_empty_runtime_puts_both_services_back() {
    let (_dir, mut f) = fixture();
    let (first, id, second) = canary_awaiting(&f);
    f.restart_with_fresh_runtime().unwrap();
    assert_eq!(f.running_revision("canary"), None);
    ticks(&f, 1, Duration::from_secs(1));
    assert_eq!(f.running_revision("canary").as_deref(), Some(second.as_str()));
    assert_eq!(f.running_revision("primary").as_deref(), Some(first.as_str()));
    assert!(f.is_awaiting(id));
    f.engine.decide(id, true, "alice", "").unwrap();
    f.tick_until("the release to succeed", |f| f.execution(id).unwrap().status == status::SUCCEEDED).unwrap();
}

#[test]
fn restart_resumes_a_pause_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fixture::with_spec(dir.path(), |s| {
        s.steps = vec![
            Step::Deploy { service: ServiceName::Canary, timeout: Duration::from_secs(600) },
            Step::Pause { duration: Duration::from_secs(600) },
            Step::Approval { timeout: Duration::from_secs(86_400) },
            Step::Deploy { service: ServiceName::Primary, timeout: Duration::from_secs(600) },
        ]
    })
    .unwrap();
    f.bootstrap().unwrap();
    let c = f.commit("second version");
    f.tick_until("the pause", |f| {
        f.execution_of(&c).unwrap().is_some_and(|e| f.stage_status(e.id, "Pause 10m").unwrap() == Some(status::IN_PROGRESS))
    })
    .unwrap();
    let id = f.execution_of(&c).unwrap().unwrap().id;
    ticks(&f, 1, Duration::from_secs(360));
    f.restart().unwrap();
    ticks(&f, 1, Duration::from_secs(200));
    assert_eq!(f.stage_status(id, "Pause 10m").unwrap(), Some(status::IN_PROGRESS), "9m20s of 10m");
    ticks(&f, 1, Duration::from_secs(41));
    f.tick_until("the approval after the pause", |f| f.is_awaiting(id)).unwrap();
    assert_eq!(f.stage_status(id, "Pause 10m").unwrap(), Some(status::SUCCEEDED));
}

#[test]
fn queue_outage_does_not_stop_the_release() {
    let (_dir, f) = fixture();
    f.queue.set_unavailable(Some("connection refused"));
    let c = f.commit("first version");
    // The queue's errors are reported, but the stages and services still move.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        f.clock.advance(Duration::from_secs(1));
        let r = f.tick();
        if f.execution_of(&c).unwrap().is_some_and(|e| e.status == status::SUCCEEDED) {
            break;
        }
        if let Err(e) = r {
            assert!(e.to_string().contains("connection refused"), "{e}");
        }
        assert!(std::time::Instant::now() < deadline, "the release did not succeed during the outage");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(f.running_revision("primary").as_deref(), Some(c.revision().as_str()));
}
