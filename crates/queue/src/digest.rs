//! The MD5 digests SQS returns and the SDKs verify.

use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::{Map, Value};

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// Text of a fixed length (hex digests, message ids, receipt handles) kept inline: an answer
/// writes it as a string without allocating one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ascii<const N: usize>([u8; N]);

impl<const N: usize> Ascii<N> {
    /// `bytes` must be ASCII.
    pub fn new(bytes: [u8; N]) -> Self {
        assert!(bytes.is_ascii(), "inline text is ASCII");
        Ascii(bytes)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl<const N: usize> std::fmt::Display for Ascii<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> std::fmt::Debug for Ascii<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq<&str> for Ascii<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl<const N: usize> serde::Serialize for Ascii<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

pub fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

pub fn md5_hex(data: &[u8]) -> Ascii<32> {
    hex16(&md5(data))
}

/// A 16-byte digest as lowercase hex.
pub fn hex16(digest: &[u8; 16]) -> Ascii<32> {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = H[(b >> 4) as usize];
        out[2 * i + 1] = H[(b & 15) as usize];
    }
    Ascii(out)
}

/// A message id (a UUID's hyphenated lowercase form).
pub fn message_id(id: [u8; 16]) -> Ascii<36> {
    let mut out = [0u8; 36];
    uuid::Uuid::from_bytes(id).hyphenated().encode_lower(&mut out);
    Ascii(out)
}

fn put(h: &mut Md5, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

fn b64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// MD5 of message attributes as SQS computes it: names sorted; for each, the length-prefixed
/// name and data type, a transport byte (1 string, 2 binary, 3 string list, 4 binary list) and
/// the length-prefixed value(s). Attribute values are in the JSON protocol's shape (binary
/// values base64). Returns `None` for no attributes.
pub fn md5_of_attributes(attrs: &Map<String, Value>) -> Option<String> {
    if attrs.is_empty() {
        return None;
    }
    let mut names: Vec<&String> = attrs.keys().collect();
    names.sort();
    let mut h = Md5::new();
    for name in names {
        let v = &attrs[name];
        let data_type = v.get("DataType").and_then(Value::as_str).unwrap_or("");
        put(&mut h, name.as_bytes());
        put(&mut h, data_type.as_bytes());
        if let Some(s) = v.get("StringValue").and_then(Value::as_str) {
            h.update([1u8]);
            put(&mut h, s.as_bytes());
        } else if let Some(b) = v.get("BinaryValue") {
            h.update([2u8]);
            put(&mut h, &b64(b));
        } else if let Some(list) = v.get("StringListValues").and_then(Value::as_array) {
            h.update([3u8]);
            for s in list {
                put(&mut h, s.as_str().unwrap_or("").as_bytes());
            }
        } else if let Some(list) = v.get("BinaryListValues").and_then(Value::as_array) {
            h.update([4u8]);
            for b in list {
                put(&mut h, &b64(b));
            }
        }
    }
    Some(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_md5_matches_known_value() {
        assert_eq!(md5_hex(b"hi"), "49f68a5c8493ec2c0bf489821c21fc3b");
        assert_eq!(serde_json::to_string(&md5_hex(b"hi")).unwrap(), "\"49f68a5c8493ec2c0bf489821c21fc3b\"");
    }

    #[test]
    fn message_ids_are_hyphenated_lowercase_uuids() {
        let id = uuid::Uuid::parse_str("D6B7571F-FCB5-4236-A049-87CA4B8DB5CB").unwrap();
        assert_eq!(message_id(*id.as_bytes()), "d6b7571f-fcb5-4236-a049-87ca4b8db5cb");
    }

    #[test]
    fn attribute_md5_is_order_independent_and_type_sensitive() {
        let a: Map<String, Value> = serde_json::from_str(
            r#"{"b":{"DataType":"String","StringValue":"x"},"a":{"DataType":"Number","StringValue":"1"}}"#,
        )
        .unwrap();
        let b: Map<String, Value> = serde_json::from_str(
            r#"{"a":{"DataType":"Number","StringValue":"1"},"b":{"DataType":"String","StringValue":"x"}}"#,
        )
        .unwrap();
        assert_eq!(md5_of_attributes(&a), md5_of_attributes(&b));
        let c: Map<String, Value> = serde_json::from_str(
            r#"{"a":{"DataType":"String","StringValue":"1"},"b":{"DataType":"String","StringValue":"x"}}"#,
        )
        .unwrap();
        assert_ne!(md5_of_attributes(&a), md5_of_attributes(&c));
        assert_eq!(md5_of_attributes(&Map::new()), None);
    }
}
