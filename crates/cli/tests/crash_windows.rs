//! A rollback's writes are one transaction, and the canary's restoration is part of it: the
//! engine is killed (SIGKILL, by its fault-injection hook `COALMINE_FAULT_INJECT`) before, after
//! and between every pair of writes of a rollback; after a restart the canary is back on the
//! primary's revision and the bad revision never reaches the primary.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(90);

#[test]
fn a_kill_anywhere_in_a_rollback_ends_with_the_canary_restored() {
    let mut points = vec!["end-execution:before".to_string()];
    points.extend((1..=7).map(|k| format!("end-execution:write-{k}")));
    points.push("end-execution:committed".to_string());
    for point in &points {
        let mut app = App::new("");
        let v1 = app.commit(WORKER_OK, BUILDSPEC, "first release");
        app.start_env(&[("COALMINE_FAULT_INJECT", point)]);
        app.wait_status("the first release", T, |v| {
            exec_status(v) == "Succeeded" && service_steady(v, "primary") && service_steady(v, "canary")
        });
        let v2 = app.commit(WORKER_OK, BUILDSPEC, "to be rejected");
        let v = app.wait_status("the second revision awaiting approval", T, waiting_for_approval);
        let id = exec_id(&v);
        let _ = app.cli(&["reject", "-m", "no"]);
        // The engine dies at the injected point.
        let mut up = app.up.take().unwrap();
        let status = wait_for(&format!("coalmine up to die at {point}"), T, || up.try_wait().unwrap(), || app.up_log());
        assert!(!status.success(), "{point}: {status}");
        let log = app.up_log();
        assert!(log.contains(&format!("fault injection: killed at {point}")), "{point}: never reached\n{log}");

        app.start();
        let v = app.wait_status(&format!("after a kill at {point}: the canary back on {v1}"), T, |v| {
            exec_id(v) == id && exec_status(v) == "RolledBack" && service_revision(v, "canary") == v1 && service_steady(v, "canary")
        });
        assert_eq!(service_revision(&v, "primary"), v1, "{point}: the rejected revision reached the primary");
        let stages = v["execution"]["stages"].as_array().unwrap();
        let primary = stages.iter().find(|s| s["name"] == "Deploy primary").unwrap();
        assert_eq!(primary["status"], "Pending", "{point}: {primary}");
        let approval = stages.iter().find(|s| s["name"] == "Approval").unwrap();
        assert_ne!(approval["status"], "InProgress", "{point}: {approval}");
        let rollbacks = v["execution"]["rollbacks"].as_array().unwrap();
        assert_eq!(rollbacks.len(), 1, "{point}: one rollback recorded: {rollbacks:?}");
        assert_eq!(rollbacks[0]["revision"], v2);
    }
}
