//! The busiest actions' answers written as AWS JSON 1.0 bodies by hand: the same text serde
//! writes for them (a test holds the two equal), without its per-byte escaping of every string —
//! a message body is copied whole when nothing in it needs escaping, as is nearly always so.

use super::*;

/// `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string is plain JSON");
    }
}

/// `,"key":"value"` for text that needs no escaping (digests, ids, receipt handles).
fn plain(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `,"key":<value as serde writes it>`, when there is one.
fn field<T: serde::Serialize>(out: &mut Vec<u8>, key: &str, value: Option<&T>) {
    if let Some(v) = value {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *out, v).expect("answers are plain JSON");
    }
}

/// `[a,b,...]`.
fn list<T: Answer>(out: &mut Vec<u8>, items: &[T]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write(out);
    }
    out.push(b']');
}

pub(crate) trait Answer {
    fn write(&self, out: &mut Vec<u8>);

    fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        self.write(&mut out);
        out
    }
}

impl Answer for Sent<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        if let Some(id) = self.id {
            out.extend_from_slice(b"\"Id\":");
            string(out, id);
            out.push(b',');
        }
        out.extend_from_slice(b"\"MessageId\":\"");
        out.extend_from_slice(self.message_id.as_str().as_bytes());
        out.push(b'"');
        plain(out, "MD5OfMessageBody", self.md5_body.as_str());
        field(out, "MD5OfMessageAttributes", self.md5_attrs.as_ref());
        field(out, "MD5OfMessageSystemAttributes", self.md5_sys.as_ref());
        field(out, "SequenceNumber", self.sequence_number.as_ref());
        out.push(b'}');
    }
}

impl Answer for Done<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"Id\":");
        string(out, &self.id);
        out.push(b'}');
    }
}

impl<T: Answer> Answer for BatchOut<T> {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"Successful\":");
        list(out, &self.successful);
        out.extend_from_slice(b",\"Failed\":");
        serde_json::to_writer(&mut *out, &self.failed).expect("answers are plain JSON");
        out.push(b'}');
    }
}

impl Answer for Received {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"MessageId\":\"");
        out.extend_from_slice(self.message_id.as_str().as_bytes());
        out.push(b'"');
        plain(out, "ReceiptHandle", self.receipt_handle.as_str());
        plain(out, "MD5OfBody", self.md5_body.as_str());
        out.extend_from_slice(b",\"Body\":");
        string(out, &self.body);
        field(out, "Attributes", self.attributes.as_ref());
        field(out, "MD5OfMessageAttributes", self.md5_attrs.as_ref());
        field(out, "MessageAttributes", self.message_attributes.as_ref());
        out.push(b'}');
    }
}

impl Answer for ReceiveOut {
    fn write(&self, out: &mut Vec<u8>) {
        if self.messages.is_empty() {
            out.extend_from_slice(b"{}");
            return;
        }
        out.extend_from_slice(b"{\"Messages\":");
        list(out, &self.messages);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::md5_hex;

    fn same<T: Answer + serde::Serialize>(v: &T) {
        assert_eq!(String::from_utf8(v.to_json()).unwrap(), serde_json::to_string(v).unwrap());
    }

    fn received(body: &str, extra: bool) -> Received {
        let attrs: Map<String, Value> = serde_json::from_str(r#"{"a":{"DataType":"String","StringValue":"x\"y"}}"#).unwrap();
        Received {
            message_id: crate::digest::message_id([7; 16]),
            receipt_handle: receipt(42, 9),
            md5_body: md5_hex(body.as_bytes()),
            body: body.to_string(),
            attributes: extra.then(|| serde_json::from_str(r#"{"SentTimestamp":"1","SenderId":"AK\\ID"}"#).unwrap()),
            md5_attrs: extra.then(|| "abc".to_string()),
            message_attributes: extra.then_some(attrs),
        }
    }

    /// What serde would write, for plain bodies and those that need escaping, with and without
    /// the optional fields.
    #[test]
    fn hand_written_answers_are_what_serde_writes() {
        for body in ["plain 100 bytes", "quote \" backslash \\ tab \t newline \n nul \u{0} and \u{1f}", "unicode é 中 🦀 \u{7f}", ""] {
            for extra in [false, true] {
                same(&ReceiveOut { messages: vec![received(body, extra), received("second", !extra)] });
            }
        }
        same(&ReceiveOut { messages: vec![] });
        let sent = |id: Option<&'static str>, fifo: bool| Sent {
            id,
            message_id: crate::digest::message_id([1; 16]),
            md5_body: md5_hex(b"x"),
            md5_attrs: fifo.then(|| "m5".to_string()),
            md5_sys: fifo.then(|| "s5".to_string()),
            sequence_number: fifo.then(|| format!("{:020}", 3)),
        };
        same(&sent(None, false));
        same(&sent(None, true));
        let e = SqsError::invalid_parameter("bad \"value\"");
        same(&BatchOut { successful: vec![sent(Some("m\"0"), false), sent(Some("m1"), true)], failed: vec![Failed::new("m2", &e)] });
        same(&BatchOut { successful: vec![Done { id: "d0" }, Done { id: "d\\1" }], failed: vec![] });
        same(&BatchOut::<Done> { successful: vec![], failed: vec![Failed::new("d", &e)] });
    }
}
