//! A model-based test of the release engine: random sequences of commits, approvals (also of
//! stale executions), rejections, alarms, task exits, stalled deployments, restarts and time,
//! with the invariants checked after every step.

use std::collections::BTreeMap;
use std::time::Duration;

use coalmine_pipeline::store::status;
use coalmine_pipeline::testing::{Fixture, Health};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Commit,
    /// Approve the execution awaiting a decision.
    Approve,
    /// Approve an execution picked among all of them (mostly not the awaiting one).
    ApproveAny(usize),
    Reject,
    /// The canary fails three messages in a row.
    Alarm,
    /// The primary processes messages, some left held.
    Work,
    TaskExit,
    /// New canary tasks stop becoming healthy.
    StallCanary,
    HealCanary,
    Restart,
    RestartFresh,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Commit),
        3 => Just(Op::Approve),
        2 => (0usize..8).prop_map(Op::ApproveAny),
        1 => Just(Op::Reject),
        2 => Just(Op::Alarm),
        2 => Just(Op::Work),
        1 => Just(Op::TaskExit),
        1 => Just(Op::StallCanary),
        1 => Just(Op::HealCanary),
        1 => Just(Op::Restart),
        1 => Just(Op::RestartFresh),
        3 => prop_oneof![1u64..5_000, 60_000u64..1_200_000, Just(7 * 86_400_000u64)].prop_map(Op::Advance),
    ]
}

/// What the model remembers between steps.
#[derive(Default)]
struct Model {
    /// Ended executions: (status, finished_ms), which must never change.
    ended: BTreeMap<i64, (coalmine_pipeline::store::Status, Option<i64>)>,
    /// Approvals the engine accepted: execution -> revision it was shown.
    accepted: BTreeMap<i64, String>,
    primary: Option<String>,
}

const END_KINDS: [&str; 5] = ["succeeded", "failed", "rolledback", "superseded", "stopped"];

/// Tick with the clock moving a second each time, until no build is under way (its result
/// comes back from the engine's build thread), then a few more.
fn settle(f: &Fixture) {
    let building = |f: &Fixture| {
        let store = f.store().unwrap();
        store.executions_in(status::IN_PROGRESS).unwrap().iter().any(|e| {
            store.stages(e.id).unwrap().iter().any(|s| s.name == "Build" && s.status != status::SUCCEEDED && s.status != status::FAILED)
        })
    };
    for _ in 0..4 {
        f.clock.advance(Duration::from_secs(1));
        f.tick_until("the build to come back", |f| !building(f)).unwrap();
    }
}

fn apply(f: &mut Fixture, m: &mut Model, op: &Op) {
    let awaiting = f.engine.awaiting_approval().unwrap();
    match op {
        Op::Commit => {
            f.commit("change");
        }
        Op::Approve | Op::Reject => {
            if let Some(e) = awaiting {
                let approve = matches!(op, Op::Approve);
                let shown = f.engine.decide(e.id, approve, "tester", "").unwrap();
                assert_eq!(shown.revision, e.revision);
                if approve {
                    m.accepted.insert(e.id, e.revision);
                }
            }
        }
        Op::ApproveAny(i) => {
            let all = f.store().unwrap().executions(u32::MAX).unwrap();
            if all.is_empty() {
                return;
            }
            let e = &all[i % all.len()];
            let before = f.store().unwrap().approvals(e.id).unwrap().len();
            match f.engine.decide(e.id, true, "tester", "") {
                Ok(shown) => {
                    assert_eq!(awaiting.as_ref().map(|a| a.id), Some(e.id), "only the awaiting execution takes a decision");
                    assert_eq!(shown.revision, e.revision);
                    m.accepted.insert(e.id, e.revision.clone());
                }
                Err(err) => {
                    assert!(matches!(err, coalmine_pipeline::PipelineError::Refused(_)), "{err}");
                    assert_eq!(f.store().unwrap().approvals(e.id).unwrap().len(), before, "a refused approval records nothing");
                }
            }
        }
        Op::Alarm => {
            if let Some(e) = awaiting.or_else(|| f.store().unwrap().executions_in(status::IN_PROGRESS).unwrap().pop()) {
                if let Some(key) = f.canary_key(&e.revision) {
                    f.queue.process(&key, 0, 3);
                }
            }
        }
        Op::Work => {
            for key in f.runtime.task_keys("primary") {
                f.queue.process(&key, 5, 1);
                f.queue.send(1);
                f.queue.receive(&key, 1);
            }
        }
        Op::TaskExit => {
            f.runtime.exit_tasks("canary");
        }
        Op::StallCanary => f.runtime.set_service_health("canary", Health::Manual),
        Op::HealCanary => {
            f.runtime.set_service_health("canary", Health::Immediate);
            f.runtime.make_healthy("canary");
        }
        Op::Restart => f.restart().unwrap(),
        Op::RestartFresh => {
            // The new runtime's tasks become healthy at once again.
            f.restart_with_fresh_runtime().unwrap();
        }
        Op::Advance(ms) => f.clock.advance_ms(*ms),
    }
    settle(f);
}

fn check(f: &Fixture, m: &mut Model) {
    let store = f.store().unwrap();
    let execs = store.executions(u32::MAX).unwrap();
    let in_progress: Vec<_> = execs.iter().filter(|e| e.status == status::IN_PROGRESS).collect();
    assert!(in_progress.len() <= 1, "one execution at a time: {in_progress:?}");
    for e in &execs {
        // An execution ends at most once, and what ended stays ended.
        let ends = store.events(Some(e.id), u32::MAX).unwrap().into_iter().filter(|ev| END_KINDS.contains(&ev.kind.as_str())).count();
        let ended = e.status != status::IN_PROGRESS && e.status != status::QUEUED;
        assert_eq!(ends, ended as usize, "execution #{} ({}) has {ends} end event(s)", e.id, e.status);
        if ended {
            let now = (e.status.clone(), e.finished_ms);
            let was = m.ended.entry(e.id).or_insert_with(|| now.clone());
            assert_eq!(*was, now, "execution #{} ended again", e.id);
        }
        // An approval names its execution's revision, and only the engine's own (auto) or
        // those it accepted exist.
        for a in store.approvals(e.id).unwrap() {
            assert_eq!(a.revision, e.revision, "approval of #{} names another revision", e.id);
            if a.decision == "approved" {
                assert_eq!(m.accepted.get(&e.id), Some(&e.revision), "approval of #{} that was never accepted", e.id);
            }
        }
    }
    // The primary is only ever promoted to the revision of an execution that succeeded
    // with an accepted approval of that revision (or the bootstrap).
    let primary = store.kv_get("primary_revision").unwrap();
    if primary != m.primary {
        let p = primary.clone().expect("the primary revision is never unset");
        let promoted = execs.iter().any(|e| {
            e.revision == p && e.status == status::SUCCEEDED && (e.bootstrap || m.accepted.get(&e.id) == Some(&p))
        });
        assert!(promoted, "primary promoted to {p} without an approval of it");
        m.primary = primary.clone();
    }
    // With no execution under way, the canary runs the primary's revision (restored after
    // a rollback), in the store and in the runtime.
    if let (Some(p), true) = (&primary, in_progress.is_empty()) {
        assert_eq!(store.service("canary").unwrap().map(|(r, _)| r).as_ref(), Some(p), "desired canary");
        assert_eq!(f.engine.runtime().spec("canary").map(|s| s.revision.name).as_ref(), Some(p), "running canary");
        assert_eq!(store.service("primary").unwrap().map(|(r, _)| r).as_ref(), Some(p), "desired primary");
    }
    // Every rollback goes back to a revision the primary ran.
    for rb in store.rollbacks(None).unwrap() {
        assert_ne!(rb.revision, rb.to_revision);
        assert!(rb.lost == 0, "rollback lost messages: {rb:?}");
    }
    // The queue conserves messages.
    let t = f.queue.totals();
    assert!(t.conserved(), "{t:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_release_invariants(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(dir.path()).unwrap();
        let mut m = Model::default();
        f.bootstrap().unwrap();
        check(&f, &mut m);
        for op in &ops {
            apply(&mut f, &mut m, op);
            check(&f, &mut m);
        }
        if std::env::var("MODEL_STATS").is_ok() {
            let mut by = BTreeMap::<String, usize>::new();
            for e in f.store().unwrap().executions(u32::MAX).unwrap() { *by.entry(e.status.to_string()).or_default() += 1; }
            eprintln!("STATS {by:?} rollbacks={}", f.store().unwrap().rollbacks(None).unwrap().len());
        }
    }
}
