//! AWS Signature Version 4 checks (only with `--verify-signatures`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::error::{QueueError, SqsError};

/// The keys the queue accepts: access key id -> secret access key. Clones share the keys, so
/// the holder of one adds and removes keys while the queue serves (`coalmine up` registers
/// each task's key as it starts and removes it when it stops). `Debug` shows key ids only.
#[derive(Clone, Default)]
pub struct Credentials(Arc<RwLock<HashMap<String, String>>>);

impl Credentials {
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Accept `access_key_id` signed with `secret` (replacing its secret if known).
    pub fn insert(&self, access_key_id: impl Into<String>, secret: impl Into<String>) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(access_key_id.into(), secret.into());
    }

    /// Stop accepting `access_key_id`; whether it was known.
    pub fn remove(&self, access_key_id: &str) -> bool {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(access_key_id).is_some()
    }

    /// The secret of `access_key_id`, if known.
    pub fn secret(&self, access_key_id: &str) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(access_key_id).cloned()
    }

    pub fn contains(&self, access_key_id: &str) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains_key(access_key_id)
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<&String> = map.keys().collect();
        ids.sort();
        f.debug_struct("Credentials").field("access_key_ids", &ids).finish_non_exhaustive()
    }
}

/// Read credentials: the AWS CLI's INI format (`aws_access_key_id = ...` and
/// `aws_secret_access_key = ...` in each `[profile]`), or one `ACCESS_KEY_ID SECRET` (or
/// `ACCESS_KEY_ID:SECRET`) per line. `#` starts a comment.
pub fn load_credentials(path: &Path) -> Result<Credentials, QueueError> {
    let text = std::fs::read_to_string(path).map_err(|source| QueueError::Io { path: path.to_path_buf(), source })?;
    let out = Credentials::new();
    let mut akid: Option<String> = None;
    let mut secret: Option<String> = None;
    let flush = |a: &mut Option<String>, s: &mut Option<String>, out: &Credentials| {
        if let (Some(k), Some(v)) = (a.take(), s.take()) {
            out.insert(k, v);
        }
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            flush(&mut akid, &mut secret, &out);
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => akid = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                _ => {}
            }
            if akid.is_some() && secret.is_some() {
                flush(&mut akid, &mut secret, &out);
            }
            continue;
        }
        let mut parts = line.splitn(2, |c: char| c == ':' || c.is_whitespace());
        match (parts.next(), parts.next()) {
            (Some(k), Some(v)) if !k.is_empty() && !v.trim().is_empty() => {
                out.insert(k.to_string(), v.trim().to_string());
            }
            _ => {
                return Err(QueueError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("cannot read the line \"{line}\"; write `ACCESS_KEY_ID SECRET` or the AWS CLI credentials format"),
                })
            }
        }
    }
    flush(&mut akid, &mut secret, &out);
    if out.is_empty() {
        return Err(QueueError::Corrupt { path: path.to_path_buf(), message: "no credentials found".into() });
    }
    Ok(out)
}

fn denied(code: &'static str, message: impl Into<String>) -> SqsError {
    SqsError { code, query_code: code, status: 403, sender_fault: true, message: message.into() }
}

fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Verify the request's SigV4 signature (Authorization header or presigned query). Returns the
/// access key id.
pub fn verify(creds: &Credentials, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<String, SqsError> {
    let query: Vec<(String, String)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let qp = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (credential, signed_headers, signature, amz_date, presigned) = if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let rest = auth
            .strip_prefix("AWS4-HMAC-SHA256")
            .ok_or_else(|| denied("IncompleteSignature", "The Authorization header must use AWS4-HMAC-SHA256 (SigV4)."))?;
        let mut cred = None;
        let mut sh = None;
        let mut sig = None;
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                cred = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                sh = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("Signature=") {
                sig = Some(v.to_string());
            }
        }
        let date = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).map(str::to_string);
        match (cred, sh, sig, date) {
            (Some(c), Some(h), Some(s), Some(d)) => (c, h, s, d, false),
            _ => return Err(denied("IncompleteSignature", "The Authorization header needs Credential, SignedHeaders, Signature and an X-Amz-Date header.")),
        }
    } else if let (Some(c), Some(h), Some(s), Some(d)) = (qp("X-Amz-Credential"), qp("X-Amz-SignedHeaders"), qp("X-Amz-Signature"), qp("X-Amz-Date")) {
        (c, h, s, d, true)
    } else {
        return Err(denied("MissingAuthenticationToken", "The request must be signed with AWS Signature Version 4 (this broker runs with --verify-signatures)."));
    };
    let mut scope = credential.splitn(2, '/');
    let akid = scope.next().unwrap_or("").to_string();
    let scope = scope.next().unwrap_or("").to_string();
    let secret = creds
        .secret(&akid)
        .ok_or_else(|| denied("InvalidClientTokenId", format!("The security token included in the request is invalid: the queue knows no access key id {akid}.")))?;
    let sp: Vec<&str> = scope.split('/').collect();
    if sp.len() != 4 || sp[3] != "aws4_request" {
        return Err(denied("IncompleteSignature", format!("The credential scope \"{scope}\" is not DATE/REGION/SERVICE/aws4_request.")));
    }
    let mut q: Vec<(String, String)> =
        query.iter().filter(|(k, _)| !(presigned && k == "X-Amz-Signature")).map(|(k, v)| (uri_encode(k), uri_encode(v))).collect();
    q.sort();
    let canonical_query = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let value = if values.is_empty() && name == "host" { String::new() } else { values.join(",") };
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let payload_hash = match headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
        Some(h) => h.to_string(),
        None if presigned => "UNSIGNED-PAYLOAD".to_string(),
        None => hex(&Sha256::digest(body)),
    };
    let path = if uri.path().is_empty() { "/" } else { uri.path() };
    let canonical = format!("{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let k = hmac(format!("AWS4{secret}").as_bytes(), sp[0].as_bytes());
    let k = hmac(&k, sp[1].as_bytes());
    let k = hmac(&k, sp[2].as_bytes());
    let k = hmac(&k, b"aws4_request");
    let expected = hex(&hmac(&k, to_sign.as_bytes()));
    if expected != signature {
        return Err(denied(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(akid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_credential_formats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        std::fs::write(&p, "[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n\nAK2 s2\nAK3:s3 # comment\n").unwrap();
        let c = load_credentials(&p).unwrap();
        assert_eq!(c.secret("AK1").as_deref(), Some("s1"));
        assert_eq!(c.secret("AK2").as_deref(), Some("s2"));
        assert_eq!(c.secret("AK3").as_deref(), Some("s3"));
        assert!(!format!("{c:?}").contains("s1"), "Debug shows no secret: {c:?}");
        let shared = c.clone();
        shared.insert("AK4", "s4");
        assert!(c.remove("AK4") && !shared.contains("AK4"), "clones share the keys");
    }
}
