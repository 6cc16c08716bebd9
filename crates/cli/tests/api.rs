//! The control plane's HTTP API against the real binary: every route, with and without the
//! token; decisions, rollback and stop through the API; logs (tail and follow); the queue's
//! telemetry as seen by the API and by `/metrics`, produced by a real consumer of the
//! embedded queue.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const T: Duration = Duration::from_secs(60);

/// A client of one running `up`'s API.
struct Api {
    base: String,
    queue: String,
    token: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Api {
    fn new(app: &App) -> Api {
        let info: Value = serde_json::from_str(&std::fs::read_to_string(app.path().join(".coalmine/up.json")).unwrap()).unwrap();
        let token = std::fs::read_to_string(app.path().join(".coalmine/token")).unwrap().trim().to_string();
        Api {
            base: info["api"].as_str().unwrap().to_string(),
            queue: info["queue"].as_str().unwrap().to_string(),
            token,
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// A request; `token` None sends no Authorization header. Streams: only the head and the
    /// first chunk are read.
    fn call(&self, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> Reply {
        let url = if path.starts_with('/') { format!("{}{path}", self.base) } else { path.to_string() };
        self.rt.block_on(async {
            let mut req = self.http.request(method.parse().unwrap(), &url).timeout(Duration::from_secs(30));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let mut resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = resp.status().as_u16();
            let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let body = if content_type.starts_with("text/event-stream") {
                String::new()
            } else {
                let mut out = Vec::new();
                while let Some(chunk) = resp.chunk().await.unwrap() {
                    out.extend_from_slice(&chunk);
                }
                String::from_utf8_lossy(&out).into_owned()
            };
            Reply { status, content_type, body }
        })
    }

    fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, Some(&self.token))
    }

    fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body), Some(&self.token))
    }

    fn ok_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// Read a server-sent event stream until `enough` holds for the (event, data) pairs seen.
    fn sse_until(&self, path: &str, what: &str, enough: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut resp = self.http.get(&url).bearer_auth(&self.token).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "GET {path}");
            assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
            let mut buf = String::new();
            let mut events = Vec::new();
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let chunk = tokio::time::timeout_at(deadline, resp.chunk())
                    .await
                    .unwrap_or_else(|_| panic!("timed out waiting for {what} on {path}; got {events:?}"))
                    .unwrap();
                let Some(chunk) = chunk else { panic!("{path} ended before {what}; got {events:?}") };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = buf.find("\n\n") {
                    let block: String = buf.drain(..i + 2).collect();
                    let mut ev = String::from("message");
                    let mut data = Vec::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            ev = v.trim_start().to_string();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                        }
                    }
                    if !data.is_empty() || ev != "message" {
                        events.push((ev, data.join("\n")));
                    }
                }
                if enough(&events) {
                    return events;
                }
            }
        })
    }

    /// One call of the embedded queue's JSON protocol, signed as `access_key_id`.
    fn sqs(&self, action: &str, access_key_id: &str, body: Value) -> Value {
        self.rt.block_on(async {
            let resp = self
                .http
                .post(&self.queue)
                .header("X-Amz-Target", format!("AmazonSQS.{action}"))
                .header("Content-Type", "application/x-amz-json-1.0")
                .header(
                    "Authorization",
                    format!("AWS4-HMAC-SHA256 Credential={access_key_id}/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"),
                )
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert!(status.is_success(), "SQS {action}: {status} {text}");
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            }
        })
    }
}

fn bootstrap(app: &mut App) -> String {
    let rev = app.commit(WORKER_OK, BUILDSPEC, "first release");
    app.start();
    app.wait_status("the first release on both services", T, |v| {
        exec_status(v) == "Succeeded" && service_steady(v, "primary") && service_steady(v, "canary") && service_revision(v, "canary") == rev
    });
    rev
}

fn poll<V>(what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let deadline = Instant::now() + T;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_documented_route_answers_and_refuses_a_missing_or_wrong_token() {
    let mut app = App::new("");
    let rev = bootstrap(&mut app);
    let api = Api::new(&app);
    let id = exec_id(&app.status());

    // The OpenAPI document itself needs the token.
    assert_eq!(api.call("GET", "/api/v1/openapi.json", None, None).status, 401);
    let doc = api.ok_json("/api/v1/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(doc["components"]["securitySchemes"]["token"]["scheme"], "bearer");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/status", "/spec", "/executions", "/executions/{id}", "/executions/{id}/approve", "/executions/{id}/reject",
        "/executions/{id}/stop", "/executions/{id}/retry", "/executions/{id}/build-log", "/executions/{id}/build-log/stream", "/rollback", "/trigger",
        "/rollbacks", "/events", "/events/stream", "/services", "/services/{name}", "/services/{name}/tasks",
        "/services/{name}/logs", "/services/{name}/logs/stream", "/tasks/{id}/logs", "/tasks/{id}/logs/stream", "/queue",
        "/queue/dead-letters", "/queue/in-flight", "/series", "/telemetry",
    ] {
        assert!(paths.contains_key(p), "OpenAPI document lacks {p}: {:?}", paths.keys().collect::<Vec<_>>());
    }

    let tasks = api.ok_json("/api/v1/services/canary/tasks");
    let task = tasks[0]["id"].as_str().unwrap().to_string();
    let mut checked = 0;
    for (path, item) in paths {
        for method in ["get", "post"] {
            if item.get(method).is_none() {
                continue;
            }
            let param = if path.starts_with("/tasks") { task.clone() } else { id.to_string() };
            let url = format!("/api/v1{path}").replace("{name}", "canary").replace("{id}", &param);
            let m = method.to_uppercase();
            // Without a token, with a wrong one, with a right one of the wrong length.
            for bad in [None, Some("wrong"), Some(&api.token[..api.token.len() - 1])] {
                let r = api.call(&m, &url, None, bad);
                assert_eq!(r.status, 401, "{m} {url} with token {bad:?}: {} {}", r.status, r.body);
                assert!(r.json()["error"].as_str().unwrap().contains(".coalmine/token"), "{}", r.body);
            }
            // With the token: never 401/404/405 for the documented shape (POSTs on an ended
            // execution are refused with 409, which still proves the route exists).
            if m == "GET" {
                let r = api.get(&url);
                assert_eq!(r.status, 200, "GET {url}: {}", r.body);
                if path.ends_with("/stream") {
                    assert!(r.content_type.starts_with("text/event-stream"), "GET {url}: {}", r.content_type);
                }
            } else {
                let r = api.post(&url, json!({}));
                assert!([200, 409].contains(&r.status), "POST {url}: {} {}", r.status, r.body);
            }
            checked += 1;
        }
    }
    assert!(checked >= 26, "checked only {checked} routes");
    // Unknown API paths need the token too; with it they are 404 with a pointer to the document.
    assert_eq!(api.call("GET", "/api/v1/nope", None, None).status, 401);
    let r = api.get("/api/v1/nope");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("openapi.json"));

    // Path traversal: a task id that is a path is refused, never read; a log file that is a
    // link out of the state folder is not followed; execution ids are numbers.
    std::fs::write(app.path().join("secret-1.log"), "top secret").unwrap();
    for bad in ["..%2F..%2F..%2Fsecret-1", "canary-1%2F..%2F..%2F..%2F..%2Fsecret-1", "%2E%2E-1", "canary-1.log", "canary-1%00"] {
        for suffix in ["/logs", "/logs/stream"] {
            let r = api.get(&format!("/api/v1/tasks/{bad}{suffix}"));
            assert_eq!(r.status, 400, "{bad}{suffix}: {}", r.body);
            assert!(r.json()["error"].as_str().unwrap().contains("not a task id"), "{}", r.body);
        }
    }
    let planted = app.path().join(".coalmine/logs/tasks/canary/canary-999.log");
    std::os::unix::fs::symlink(app.path().join("secret-1.log"), &planted).unwrap();
    let r = api.get("/api/v1/tasks/canary-999/logs");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!r.body.contains("top secret"));
    std::fs::remove_file(&planted).unwrap();
    let r = api.get("/api/v1/executions/..%2Fsecret/build-log");
    assert_eq!(r.status, 400, "{}", r.body);

    // The refusals are logged by the server.
    let log = app.up_log();
    assert!(log.contains("401") && log.contains("/api/v1/status"), "no 401 in the log:\n{log}");

    // The dashboard and the metrics need no token; an unknown API path needs one still.
    let page = api.call("GET", "/", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/assets/app.js"));
    assert!(api.call("GET", "/assets/app.js", None, None).body.contains("sessionStorage"));
    let m = api.call("GET", "/metrics", None, None);
    assert_eq!(m.status, 200);
    assert!(m.content_type.starts_with("text/plain; version=0.0.4"), "{}", m.content_type);
    assert!(m.body.contains(&format!("coalmine_service_tasks{{service=\"canary\",revision=\"{rev}\",state=\"running\"}} 1")), "{}", m.body);
    assert!(m.body.contains("coalmine_executions{app=\"tiny\",status=\"Succeeded\"} 1"), "{}", m.body);
}

#[test]
fn decisions_rollback_stop_and_logs_through_the_api() {
    let mut app = App::new("");
    let v1 = bootstrap(&mut app);
    let api = Api::new(&app);

    let spec = api.ok_json("/api/v1/spec");
    assert_eq!(spec["app"], "tiny");
    assert_eq!(spec["services"]["primary"]["tasks"], 2);

    // v2 waits for approval.
    let v2 = app.commit(WORKER_OK, BUILDSPEC, "second release\n\nwith a body");
    let st = app.wait_status("v2 awaiting approval", T, waiting_for_approval);
    let id = exec_id(&st);
    let st = api.ok_json("/api/v1/status");
    assert_eq!(st["execution"]["revision"], v2.as_str());
    assert_eq!(st["primary_revision"], v1.as_str());
    let one = api.ok_json(&format!("/api/v1/executions/{id}"));
    let names: Vec<&str> = one["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Source", "Build", "Deploy canary", "Approval", "Deploy primary"]);
    assert!(one["message"].as_str().unwrap().starts_with("second release"));
    assert_eq!(api.get("/api/v1/executions/9999").status, 404);

    // A decision made for another revision is refused; so is a decision on an unknown execution.
    let r = api.post(&format!("/api/v1/executions/{id}/approve"), json!({"actor": "bob", "revision": v1}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains(&v2), "{}", r.body);
    assert_eq!(api.post("/api/v1/executions/9999/approve", json!({})).status, 404);

    // Services and tasks while the canary runs v2.
    let services = api.ok_json("/api/v1/services");
    assert_eq!(services.as_array().unwrap().len(), 2);
    let canary = api.ok_json("/api/v1/services/canary");
    assert_eq!(canary["status"]["revision"], v2.as_str());
    let tasks = api.ok_json("/api/v1/services/primary/tasks");
    assert_eq!(tasks.as_array().unwrap().len(), 2);
    assert!(tasks.as_array().unwrap().iter().all(|t| t["revision"] == v1.as_str() && t["restarts"] == 0));
    assert_eq!(api.get("/api/v1/services/nope").status, 404);
    assert_eq!(api.get("/api/v1/services/nope/logs").status, 404);

    // Logs: tails and follows.
    let canary_task = api.ok_json("/api/v1/services/canary/tasks")[0]["id"].as_str().unwrap().to_string();
    let expect = format!("worker {canary_task} of {v2} up");
    let logs = poll("the canary task's log line", || {
        let r = api.get("/api/v1/services/canary/logs?lines=10");
        r.body.contains(&expect).then_some(r.body)
    });
    assert!(logs.contains(&format!("{canary_task} | {expect}")), "{logs}");
    let r = api.get(&format!("/api/v1/tasks/{canary_task}/logs"));
    assert_eq!(r.status, 200);
    assert!(r.body.contains(&expect), "{}", r.body);
    assert_eq!(api.get("/api/v1/tasks/canary-999/logs").status, 404);
    let ev = api.sse_until(&format!("/api/v1/tasks/{canary_task}/logs/stream"), "the task's line", |e| e.iter().any(|(_, d)| d.contains(&expect)));
    assert!(ev.iter().all(|(k, _)| k == "line"));
    api.sse_until("/api/v1/services/canary/logs/stream", "the service's line", |e| {
        e.iter().any(|(_, d)| d == &format!("{canary_task} | {expect}"))
    });
    let full = api.get(&format!("/api/v1/executions/{id}/build-log"));
    assert!(full.body.contains("[command] cp worker.sh out/worker.sh"), "{}", full.body);
    assert_eq!(api.get(&format!("/api/v1/executions/{id}/build-log?lines=1")).body.lines().count(), 1);
    let ev = api.sse_until(&format!("/api/v1/executions/{id}/build-log/stream"), "the end of the build log", |e| {
        e.iter().any(|(k, _)| k == "end")
    });
    let lines: Vec<&str> = ev.iter().filter(|(k, _)| k == "line").map(|(_, d)| d.as_str()).collect();
    assert_eq!(lines.join("\n") + "\n", full.body, "the stream replays the whole (short) log, then ends");

    // Approve through the API; the live stream shows the primary deploy.
    let r = api.post(&format!("/api/v1/executions/{id}/approve"), json!({"actor": "alice", "comment": "ship it", "revision": v2}));
    assert_eq!(r.status, 200, "{}", r.body);
    api.sse_until("/api/v1/events/stream", "the execution to succeed", |e| {
        e.iter().any(|(k, d)| {
            k == "snapshot"
                && serde_json::from_str::<Value>(d).is_ok_and(|v| v["status"]["execution"]["id"] == id && v["status"]["execution"]["status"] == "Succeeded")
        })
    });
    let one = api.ok_json(&format!("/api/v1/executions/{id}"));
    assert_eq!(one["approvals"][0]["actor"], "alice");
    assert_eq!(one["approvals"][0]["comment"], "ship it");
    let again = api.post(&format!("/api/v1/executions/{id}/approve"), json!({}));
    assert_eq!(again.status, 409, "approving an ended execution: {}", again.body);
    assert_eq!(api.post("/api/v1/rollback", json!({})).status, 409, "nothing in progress to roll back");

    // v3: rolled back through the API, with the reason kept.
    app.commit(WORKER_OK, BUILDSPEC, "third release");
    let st = app.wait_status("v3 awaiting approval", T, waiting_for_approval);
    let id3 = exec_id(&st);
    let r = api.post("/api/v1/rollback", json!({"actor": "carol", "reason": "latency looks odd"}));
    assert_eq!(r.status, 200, "{}", r.body);
    app.wait_status("v3 rolled back", T, |v| exec_id(v) == id3 && exec_status(v) == "RolledBack" && service_revision(v, "canary") == v2);
    let rbs = api.ok_json("/api/v1/rollbacks");
    let rb = rbs.as_array().unwrap().iter().find(|r| r["execution_id"] == id3).expect("rollback of v3 listed");
    assert_eq!(rb["actor"], "carol");
    assert!(rb["reason"].as_str().unwrap().contains("latency looks odd"));

    // v4: stopped through the API.
    app.commit(WORKER_OK, BUILDSPEC, "fourth release");
    let st = app.wait_status("v4 awaiting approval", T, |v| waiting_for_approval(v) && exec_id(v) > id3);
    let id4 = exec_id(&st);
    let r = api.post(&format!("/api/v1/executions/{id4}/stop"), json!({"actor": "dave", "reason": "wrong branch"}));
    assert_eq!(r.status, 200, "{}", r.body);
    app.wait_status("v4 stopped", T, |v| exec_id(v) == id4 && exec_status(v) == "Stopped");
    assert_eq!(api.post(&format!("/api/v1/executions/{id4}/stop"), json!({})).status, 409);

    // v5: rejected through the API, with the comment kept.
    app.commit(WORKER_OK, BUILDSPEC, "fifth release");
    let st = app.wait_status("v5 awaiting approval", T, |v| waiting_for_approval(v) && exec_id(v) > id4);
    let id5 = exec_id(&st);
    let r = api.post(&format!("/api/v1/executions/{id5}/reject"), json!({"actor": "frank", "comment": "error rate too high"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = app.wait_status("v5 rejected", T, |v| exec_id(v) == id5 && exec_status(v) == "RolledBack" && service_revision(v, "canary") == v2);
    assert!(v["execution"]["reason"].as_str().unwrap().contains("error rate too high"), "{v}");
    let one = api.ok_json(&format!("/api/v1/executions/{id5}"));
    assert_eq!((one["approvals"][0]["decision"].as_str(), one["approvals"][0]["actor"].as_str()), (Some("rejected"), Some("frank")));

    // History, newest first, with how each ended; events in order.
    let hist = api.ok_json("/api/v1/executions?limit=4");
    let got: Vec<(i64, &str)> = hist.as_array().unwrap().iter().map(|e| (e["id"].as_i64().unwrap(), e["status"].as_str().unwrap())).collect();
    assert_eq!(got, [(id5, "RolledBack"), (id4, "Stopped"), (id3, "RolledBack"), (id, "Succeeded")]);
    let events = api.ok_json("/api/v1/events");
    let ids: Vec<i64> = events.as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && !ids.is_empty());
    let last = *ids.last().unwrap();
    assert!(api.ok_json(&format!("/api/v1/events?after={last}")).as_array().unwrap().is_empty());
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "approved" && e["actor"] == "alice"));

    // Trigger answers at once.
    assert_eq!(api.post("/api/v1/trigger", json!({})).json(), json!({"triggered": true}));
}

#[test]
fn queue_telemetry_series_and_metrics_follow_a_real_consumer() {
    // The test plays a canary task of its own (key `CM.canary.<rev>.77`, unsigned): only a
    // queue that accepts any key, the documented escape, lets it.
    let mut app = App::new("[queue]\nverify_signatures = false\n");
    let rev = bootstrap(&mut app);
    let api = Api::new(&app);
    let url = api.ok_json("/api/v1/spec");
    let queue_url = format!("{}/000000000000/{}", api.queue, url["queue"]["name"].as_str().unwrap());
    let canary = format!("CM.canary.{rev}.77");

    // 10 messages; the "canary" consumer deletes 6 and hands 4 back.
    for i in 0..10 {
        api.sqs("SendMessage", "sender", json!({"QueueUrl": queue_url, "MessageBody": format!("m{i}")}));
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        let r = api.sqs("ReceiveMessage", &canary, json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}));
        got.extend(r["Messages"].as_array().cloned().unwrap_or_default());
    }
    for (i, m) in got.iter().enumerate() {
        let handle = m["ReceiptHandle"].as_str().unwrap();
        if i < 6 {
            api.sqs("DeleteMessage", &canary, json!({"QueueUrl": queue_url, "ReceiptHandle": handle}));
        } else {
            api.sqs("ChangeMessageVisibility", &canary, json!({"QueueUrl": queue_url, "ReceiptHandle": handle, "VisibilityTimeout": 0}));
        }
    }

    // The per-second series add up to what the consumer did.
    let sums = poll("the series to count 6 processed and 4 failed", || {
        let s = api.ok_json("/api/v1/series?seconds=120");
        assert_eq!(s["step_ms"], 1000);
        let samples = s["samples"].as_array().unwrap().clone();
        let (mut p, mut f) = (0, 0);
        for x in &samples {
            if let Some(r) = x["revisions"].get(&rev) {
                p += r["processed"].as_u64().unwrap();
                f += r["failed"].as_u64().unwrap();
                assert_eq!(r["services"], json!(["canary"]));
            }
        }
        (p == 6 && f == 4).then_some(samples)
    });
    assert!(sums.last().unwrap()["queue"]["visible"].as_u64().is_some());
    let tel = api.ok_json("/api/v1/telemetry?seconds=120");
    let c = tel.as_array().unwrap().iter().find(|c| c["access_key_id"] == canary.as_str()).expect("the consumer in /telemetry").clone();
    assert_eq!((c["service"].as_str(), c["revision"].as_str(), c["task"].as_str()), (Some("canary"), Some(rev.as_str()), Some("canary-77")));
    assert_eq!((c["processed"].as_u64(), c["returned"].as_u64(), c["received"].as_u64()), (Some(6), Some(4), Some(10)));
    assert!(c["p50_ms"].as_f64().is_some());

    let depth = api.ok_json("/api/v1/queue");
    assert_eq!((depth["visible"].as_u64(), depth["in_flight"].as_u64()), (Some(4), Some(0)));

    // Receiving the 4 again moves them to the DLQ (max receive count 1) with their last receiver.
    let r = api.sqs("ReceiveMessage", &canary, json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}));
    assert!(r["Messages"].as_array().is_none_or(|m| m.is_empty()), "{r}");
    let dl = poll("4 dead letters", || {
        let d = api.ok_json("/api/v1/queue/dead-letters");
        (d.as_array().unwrap().len() == 4).then_some(d)
    });
    assert!(dl.as_array().unwrap().iter().all(|d| d["last_receiver"] == canary.as_str()), "{dl}");
    assert!(api.ok_json("/api/v1/queue/in-flight").as_array().unwrap().is_empty());

    // /metrics agrees.
    let labels = format!("service=\"canary\",revision=\"{rev}\"");
    let m = poll("metrics with the dead letters", || {
        let m = api.call("GET", "/metrics", None, None).body;
        m.contains(&format!("coalmine_messages_dead_lettered_total{{{labels}}} 4")).then_some(m)
    });
    for line in [
        format!("coalmine_messages_processed_total{{{labels}}} 6"),
        format!("coalmine_messages_failed_total{{{labels}}} 4"),
        format!("coalmine_processing_seconds_count{{{labels}}} 6"),
        format!("coalmine_processing_seconds_bucket{{{labels},le=\"+Inf\"}} 6"),
        "coalmine_queue_messages{queue=\"tiny-dlq\",state=\"visible\"} 4".to_string(),
        "coalmine_queue_messages{queue=\"tiny\",state=\"visible\"} 0".to_string(),
        "coalmine_rollbacks_total{app=\"tiny\"} 0".to_string(),
        "coalmine_task_restarts{service=\"primary\"} 0".to_string(),
    ] {
        assert!(m.contains(&line), "/metrics lacks `{line}`:\n{m}");
    }
    assert!(m.contains("# TYPE coalmine_processing_seconds histogram"));
}
