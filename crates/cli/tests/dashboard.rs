//! The dashboard in headless Chromium through WebDriver (chromedriver): the real binary
//! serves it, the page gets its token from the address's fragment, shows the stages of the
//! execution waiting for approval, and approving there carries the revision to the primary.
//! Screenshots go to `target/test-output/`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::*;

const T: Duration = Duration::from_secs(60);

/// chromedriver on a free port, in its own process group so the browsers it starts end with it.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        use std::os::unix::process::CommandExt;
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let mut child = Command::new(&bin)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{bin}` ({e}): install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) or set CHROMEDRIVER"));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut port = None;
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                port = rest.trim().trim_end_matches('.').parse().ok();
                break;
            }
            line.clear();
        }
        // keep draining its output so it never blocks on a full pipe
        std::thread::spawn(move || for _ in out.lines() {});
        let port = port.expect("chromedriver did not say which port it listens on");
        Driver { child, port, _profile: tempfile::tempdir().unwrap() }
    }

    async fn browser(&self, dark: bool) -> Client {
        self.browser_as(dark, None).await
    }

    /// A browser session; `phone_width` emulates a phone's screen of that many CSS pixels.
    async fn browser_as(&self, dark: bool, phone_width: Option<u32>) -> Client {
        // One profile per kind of session: two browsers cannot share one.
        let kind = match (dark, phone_width) {
            (_, Some(_)) => "phone",
            (true, None) => "dark",
            (false, None) => "light",
        };
        let profile = self._profile.path().join(kind);
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1440,1400".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if dark {
            args.push("--force-dark-mode".into());
            args.push("--blink-settings=preferredColorScheme=0".into());
        }
        let mut opts = json!({"args": args});
        if let Some(width) = phone_width {
            opts["mobileEmulation"] = json!({"deviceMetrics": {"width": width, "height": 860, "pixelRatio": 1.0}});
        }
        if let Ok(bin) = std::env::var("CHROMIUM") {
            opts["binary"] = json!(bin);
        } else if std::path::Path::new("/usr/bin/chromium").exists() {
            opts["binary"] = json!("/usr/bin/chromium");
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), opts);
        ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("connect to chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // the group we created: chromedriver and the browsers it started
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Evaluate `script` in the page until `ok` accepts its value.
async fn wait_js(c: &Client, what: &str, script: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    let mut last = Value::Null;
    loop {
        if let Ok(v) = c.execute(script, vec![]).await {
            if ok(&v) {
                return v;
            }
            last = v;
        }
        if Instant::now() > deadline {
            let shot = c.screenshot().await.ok();
            if let Some(png) = shot {
                let _ = std::fs::write(output_dir().join("dashboard-timeout.png"), png);
            }
            panic!("timed out waiting for {what}; last value: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Send 30 messages to the app's queue and consume them as two tasks; returns how many were deleted.
async fn traffic(endpoint: &str, canary: &str, primary: &str) -> u64 {
    let http = reqwest::Client::new();
    let url = format!("{endpoint}/000000000000/tiny");
    let call = |action: &'static str, key: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(endpoint)
                .header("X-Amz-Target", format!("AmazonSQS.{action}"))
                .header("Content-Type", "application/x-amz-json-1.0")
                .header("Authorization", format!("AWS4-HMAC-SHA256 Credential={key}/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=00"))
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "SQS {action}: {}", r.status());
            r.json::<Value>().await.unwrap_or(Value::Null)
        }
    };
    for i in 0..30 {
        call("SendMessage", "sender".into(), json!({"QueueUrl": url, "MessageBody": format!("m{i}")})).await;
    }
    let mut deleted = 0;
    let mut left = 30;
    let mut round = 0;
    while left > 0 {
        round += 1;
        let key = if round % 2 == 0 { canary } else { primary };
        let r = call("ReceiveMessage", key.into(), json!({"QueueUrl": url, "MaxNumberOfMessages": 4, "WaitTimeSeconds": 1})).await;
        for (i, m) in r["Messages"].as_array().cloned().unwrap_or_default().iter().enumerate() {
            let handle = m["ReceiptHandle"].as_str().unwrap();
            left -= 1;
            if key == canary && i == 0 {
                call("ChangeMessageVisibility", key.into(), json!({"QueueUrl": url, "ReceiptHandle": handle, "VisibilityTimeout": 0})).await;
            } else {
                call("DeleteMessage", key.into(), json!({"QueueUrl": url, "ReceiptHandle": handle})).await;
                deleted += 1;
            }
        }
        assert!(round < 200, "the queue did not hand out 30 messages");
    }
    deleted
}

const STAGES_JS: &str = "return [...document.querySelectorAll('#stages .stage')].map(s => [s.dataset.stage, s.dataset.status]);";

fn stage_status<'a>(v: &'a Value, name: &str) -> &'a str {
    v.as_array()
        .and_then(|a| a.iter().find(|s| s[0] == name))
        .and_then(|s| s[1].as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the dashboard in headless Chromium; run with: cargo test --workspace -- --include-ignored"]
async fn approve_in_the_dashboard_carries_the_revision_to_the_primary() {
    // The test plays a canary and a primary task of its own (their keys, unsigned): only a
    // queue that accepts any key, the documented escape, lets it.
    let mut app = App::new("[queue]\nverify_signatures = false\n");
    let v1 = app.commit(WORKER_OK, BUILDSPEC, "first release");
    app.start();
    app.wait_status("the first release", T, |v| exec_status(v) == "Succeeded" && service_steady(v, "primary") && service_steady(v, "canary"));
    let v2 = app.commit(WORKER_OK, BUILDSPEC, "Faster batch handling\n\nProcess messages ten at a time.");
    let st = app.wait_status("v2 awaiting approval", T, waiting_for_approval);
    let id = exec_id(&st);

    let info: Value = serde_json::from_str(&std::fs::read_to_string(app.path().join(".coalmine/up.json")).unwrap()).unwrap();
    let base = info["api"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(app.path().join(".coalmine/token")).unwrap().trim().to_string();

    // Some traffic for the charts: the canary (v2) and the primary (v1) consume, the canary
    // hands a few messages back.
    let queue = info["queue"].as_str().unwrap().to_string();
    let processed = traffic(&queue, &format!("CM.canary.{v2}.9"), &format!("CM.primary.{v1}.8")).await;

    let driver = Driver::start();
    let c = driver.browser(false).await;

    // Without the token the page asks for it and shows nothing else.
    c.goto(&format!("{base}/")).await.unwrap();
    wait_js(&c, "the token form", "const shown = (id) => document.getElementById(id).getClientRects().length > 0; return shown('login') && !shown('main');", |v| v == &json!(true)).await;

    // With it (in the fragment), the pipeline appears and the token leaves the address bar.
    c.goto(&format!("{base}/?session=1#token={token}")).await.unwrap();
    let stages = wait_js(&c, "the stages with the approval waiting", STAGES_JS, |v| stage_status(v, "Approval") == "InProgress").await;
    let names: Vec<&str> = stages.as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
    assert_eq!(names, ["Source", "Build", "Deploy canary", "Approval", "Deploy primary"]);
    assert_eq!(stage_status(&stages, "Deploy canary"), "Succeeded");
    assert_eq!(stage_status(&stages, "Deploy primary"), "Pending");
    wait_js(&c, "the approval box", "return document.getElementById('approval').getClientRects().length > 0;", |v| v == &json!(true)).await;
    let url = c.current_url().await.unwrap();
    assert!(!url.as_str().contains(&token), "the token stays in the address bar: {url}");
    let head = c.find(Locator::Id("execution-head")).await.unwrap().text().await.unwrap();
    assert!(head.contains(&v2) && head.contains("Faster batch handling"), "execution head: {head}");
    assert!(!head.contains("ten at a time"), "only the commit's first line: {head}");

    // Services with their revisions and tasks; live updates; charts drawn.
    let services = wait_js(
        &c,
        "both services with their tasks",
        "return [...document.querySelectorAll('#services .service')].map(s => [s.dataset.service, s.querySelectorAll('tbody tr').length, s.textContent]);",
        |v| v.as_array().is_some_and(|a| a.len() == 2),
    )
    .await;
    for s in services.as_array().unwrap() {
        let (name, rows, text) = (s[0].as_str().unwrap(), s[1].as_u64().unwrap(), s[2].as_str().unwrap());
        match name {
            "primary" => assert!(rows == 2 && text.contains(&v1), "primary: {s}"),
            "canary" => assert!(rows == 1 && text.contains(&v2), "canary: {s}"),
            other => panic!("unexpected service {other}"),
        }
    }
    wait_js(&c, "the live indicator", "return document.getElementById('live').textContent;", |v| v == "live").await;
    wait_js(&c, "the queue chart", "return document.querySelectorAll('#chart-queue path.series').length;", |v| v.as_u64() == Some(3)).await;
    let legend = wait_js(
        &c,
        "a processed line per revision",
        "return [document.querySelectorAll('#chart-processed path.series').length, document.querySelector('#chart-processed + .legend').textContent];",
        |v| v[0].as_u64() == Some(2),
    )
    .await;
    let legend = legend[1].as_str().unwrap();
    assert!(legend.contains(&format!("{v2} (canary)")) && legend.contains(&format!("{v1} (primary)")), "legend: {legend}");
    assert!(processed > 0);
    wait_js(&c, "the history", "return document.querySelectorAll('#history tr[data-execution]').length;", |v| v.as_u64() == Some(2)).await;
    wait_js(&c, "the build log", "return document.getElementById('log').textContent;", |v| {
        v.as_str().is_some_and(|t| t.contains("[command] cp worker.sh out/worker.sh"))
    })
    .await;
    // A task's own log, by clicking its row (the rows are redrawn every second: click in the page).
    c.execute("document.querySelector('[data-service=canary] tr.task').click(); return true;", vec![]).await.unwrap();
    wait_js(&c, "the canary task's log", "return [document.getElementById('log-title').textContent, document.getElementById('log').textContent];", |v| {
        v[0].as_str().is_some_and(|t| t.starts_with("Log of task canary-"))
            && v[1].as_str().is_some_and(|t| t.contains(&format!(" of {v2} up")))
    })
    .await;
    c.find(Locator::Id("log-tab-build")).await.unwrap().click().await.unwrap();
    wait_js(&c, "the build log again", "return document.getElementById('log').textContent;", |v| {
        v.as_str().is_some_and(|t| t.contains("[command] cp worker.sh out/worker.sh"))
    })
    .await;
    std::fs::write(output_dir().join("dashboard-approval.png"), c.screenshot().await.unwrap()).unwrap();

    // The canary's actual share of the messages, beside its share of the tasks.
    wait_js(&c, "the canary's share of messages", "const e = document.querySelector('[data-service=canary] .share'); return e ? e.textContent : '';", |v| {
        let t = v.as_str().unwrap_or_default();
        t.starts_with("receives ") && t.contains(" % of messages (last minute)") && t.ends_with("1 of 3 tasks: 33 %")
    })
    .await;

    // On a phone (400 px): nothing runs off the side, and the approval box is on screen.
    {
        let phone = driver.browser_as(false, Some(400)).await;
        phone.goto(&format!("{base}/#token={token}")).await.unwrap();
        wait_js(&phone, "the approval box on a phone", "return document.getElementById('approval').getClientRects().length > 0;", |v| v == &json!(true)).await;
        let fit = phone
            .execute(
                "const w = window.innerWidth; const r = document.getElementById('approval').getBoundingClientRect(); \
                 const out = [...document.querySelectorAll('#stages .stage, .card')].filter(e => e.getBoundingClientRect().right > w + 1).map(e => e.className); \
                 return [w, document.documentElement.scrollWidth, r.left, r.right, out];",
                vec![],
            )
            .await
            .unwrap();
        // Chromium's emulated viewport may be a pixel wider than asked.
        let w = fit[0].as_f64().unwrap();
        assert!((400.0..=410.0).contains(&w), "the phone's viewport: {fit}");
        assert!(fit[1].as_f64().unwrap() <= w, "the page is wider than the phone: {fit}");
        assert!(fit[2].as_f64().unwrap() >= 0.0 && fit[3].as_f64().unwrap() <= w, "the approval box is off screen: {fit}");
        assert_eq!(fit[4], json!([]), "stages or cards run off the side: {fit}");
        std::fs::write(output_dir().join("dashboard-phone.png"), phone.screenshot().await.unwrap()).unwrap();
        phone.close().await.unwrap();
    }

    // Approve with a comment.
    c.find(Locator::Id("actor")).await.unwrap().send_keys("erin").await.unwrap();
    c.find(Locator::Id("approval-comment")).await.unwrap().send_keys("numbers look fine").await.unwrap();
    c.find(Locator::Id("approve-btn")).await.unwrap().click().await.unwrap();

    // The page follows the pipeline to the primary deploy and its end, without a reload.
    c.execute("window.__same_page = true; return true;", vec![]).await.unwrap();
    wait_js(&c, "the primary deploy to start", STAGES_JS, |v| ["InProgress", "Succeeded"].contains(&stage_status(v, "Deploy primary"))).await;
    let done = wait_js(&c, "every stage to succeed", STAGES_JS, |v| {
        v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(|s| s[1] == "Succeeded"))
    })
    .await;
    assert_eq!(done.as_array().unwrap().len(), 5);
    assert_eq!(c.execute("return window.__same_page === true;", vec![]).await.unwrap(), json!(true), "the page reloaded");
    assert!(!c.find(Locator::Id("approval")).await.unwrap().is_displayed().await.unwrap(), "approval box still shown");
    wait_js(&c, "the history to say who approved", "return document.getElementById('history').textContent;", |v| {
        v.as_str().is_some_and(|t| t.contains("approved by erin") && t.contains("numbers look fine"))
    })
    .await;
    // The whole page, at a laptop's width.
    let height = c.execute("return document.documentElement.scrollHeight;", vec![]).await.unwrap().as_u64().unwrap();
    c.set_window_size(1440, height as u32 + 120).await.unwrap();
    std::fs::write(output_dir().join("dashboard.png"), c.screenshot().await.unwrap()).unwrap();

    // The decision reached the pipeline as made: this execution, this revision, this person.
    let v = app.wait_status("v2 on both services", T, |v| exec_id(v) == id && exec_status(v) == "Succeeded");
    assert_eq!(service_revision(&v, "primary"), v2);
    let e = app.execution(id);
    assert_eq!(e["approvals"][0]["actor"], "erin");
    assert_eq!(e["approvals"][0]["comment"], "numbers look fine");
    assert_eq!(e["approvals"][0]["revision"], v2.as_str());

    // v3 is rolled back from the page: the reason shows in the rollbacks and on the charts.
    let v3 = app.commit(WORKER_OK, BUILDSPEC, "Risky change");
    wait_js(&c, "v3 waiting for approval", STAGES_JS, |v| stage_status(v, "Approval") == "InProgress").await;
    c.find(Locator::Id("rollback-open")).await.unwrap().click().await.unwrap();
    c.find(Locator::Id("rollback-reason")).await.unwrap().send_keys("failures on the canary").await.unwrap();
    c.find(Locator::Id("rollback-confirm")).await.unwrap().click().await.unwrap();
    let rb = wait_js(&c, "the rollback listed with its reason", "return document.getElementById('rollbacks').textContent;", |v| {
        v.as_str().is_some_and(|t| t.contains("failures on the canary"))
    })
    .await;
    assert!(rb.as_str().unwrap().contains(&v3) && rb.as_str().unwrap().contains("by erin"), "rollbacks: {rb}");
    wait_js(&c, "the execution to end RolledBack", "return document.getElementById('execution-head').textContent;", |v| {
        v.as_str().is_some_and(|t| t.contains(&v3) && t.contains("RolledBack"))
    })
    .await;
    wait_js(&c, "the history to say who rolled back and why", "return document.getElementById('history').textContent;", |v| {
        v.as_str().is_some_and(|t| t.contains("rolled back by erin: failures on the canary"))
    })
    .await;
    // The stage that never ran says so, not "Pending".
    wait_js(&c, "the primary deploy marked as not run", STAGES_JS, |v| stage_status(v, "Deploy primary") == "Not run").await;
    wait_js(&c, "the rollback marker on the charts", "return document.querySelectorAll('#chart-processed .rollback-mark').length;", |v| v.as_u64() == Some(1)).await;
    app.wait_status("the canary back on v2", T, |v| exec_status(v) == "RolledBack" && service_revision(v, "canary") == v2);
    std::fs::write(output_dir().join("dashboard-rollback.png"), c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();

    // Dark mode renders too (for the screenshot).
    let d = driver.browser(true).await;
    d.goto(&format!("{base}/#token={token}")).await.unwrap();
    let bg = wait_js(&d, "the dark page", "return getComputedStyle(document.body).backgroundColor + '|' + document.querySelectorAll('#stages .stage').length;", |v| {
        v.as_str().is_some_and(|s| s.ends_with("|5"))
    })
    .await;
    std::fs::write(output_dir().join("dashboard-dark.png"), d.screenshot().await.unwrap()).unwrap();
    assert!(bg.as_str().unwrap().starts_with("rgb(15, 20, 25)"), "dark background expected: {bg}");
    d.close().await.unwrap();
}
