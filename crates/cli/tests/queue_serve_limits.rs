//! `coalmine queue serve`'s flags for accounts, limits and browsers, on the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};


#[path = "support/serve.rs"]
mod serve;

/// `coalmine queue serve` with these flags, its data in a folder of its own.
fn serve(args: &[&str]) -> (serve::Serve, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (serve::serve(dir.path(), args), dir)
}

fn client(url: &str) -> aws_sdk_sqs::Client {
    serve::client(url, "AKIDSERVEFLAGS01")
}

/// Send raw bytes, return what comes back until the server closes (or `deadline`), and whether
/// it closed.
fn raw(url: &str, request: &[u8], deadline: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    s.write_all(request).unwrap();
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (String::from_utf8_lossy(&got).into_owned(), false)
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
}

#[test]
fn account_id_read_timeout_and_unsigned_requests() {
    let (s, _dir) = serve(&["--account-id", "123456789012", "--read-timeout", "1", "--max-connections", "16"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&s.url);
        let url = c.create_queue().queue_name("flags").send().await.unwrap().queue_url().unwrap().to_string();
        assert_eq!(url, format!("{}/123456789012/flags", s.url));
    });
    // a silent connection is closed after the read timeout
    let (_, closed) = raw(&s.url, b"", Duration::from_secs(20));
    assert!(closed, "an idle connection is closed");
    // an unsigned request is refused
    let (text, _) = raw(
        &s.url,
        b"GET /?Action=CreateQueue&QueueName=x HTTP/1.1\r\nhost: q\r\nconnection: close\r\n\r\n",
        Duration::from_secs(20),
    );
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("MissingAuthenticationToken"), "{text}");
    // a cross-origin page is refused; an allowed one is not
    let form = "Action=ListQueues";
    let req = |origin: &str| {
        format!(
            "POST / HTTP/1.1\r\nhost: q\r\norigin: {origin}\r\nauthorization: AWS4-HMAC-SHA256 Credential=AKIDSERVEFLAGS01/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=00\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{form}",
            form.len()
        )
    };
    let (text, _) = raw(&s.url, req("http://evil.example").as_bytes(), Duration::from_secs(20));
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    drop(s);
    let (s, _dir) = serve(&["--allow-origin", "http://localhost:3000"]);
    let (text, _) = raw(&s.url, req("http://localhost:3000").as_bytes(), Duration::from_secs(20));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn a_bad_account_id_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coalmine"))
        .args(["queue", "serve", "--port", "0", "--account-id", "12ab", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--account-id must be 12 digits"), "{err}");
}

/// The runtime's threads of a serving queue, by name in /proc (the queue spawns no blocking
/// work, so these are its workers).
fn workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("tokio-r"))
        .count()
}

#[test]
fn threads_sets_the_serving_workers_and_zero_is_refused() {
    for (args, want) in [(&[][..], 1), (&["--threads", "3"][..], 3)] {
        let (s, _dir) = serve(args);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = client(&s.url);
            c.create_queue().queue_name("threads").send().await.unwrap();
        });
        assert_eq!(workers(s.child.id()), want, "queue serve {args:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coalmine"))
        .args(["queue", "serve", "--port", "0", "--threads", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads") && err.contains("1..=256"), "{err}");
}
