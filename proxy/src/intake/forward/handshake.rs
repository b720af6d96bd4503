//! The forward protocol's shared-key handshake (its v1 spec, "Handshake
//! Messages"), as Fluentd's `<security>` and Fluent Bit's `shared_key` speak
//! it. On a listener with `shared_keys`, Weir opens each connection with
//! `["HELO", {nonce, auth, keepalive}]`; the sender answers `["PING",
//! hostname, salt, digest, username, password_digest]`, the digest being
//! `sha512_hex(salt, hostname, nonce, key)` (the four concatenated); Weir finds
//! the key that digest proves and answers `["PONG", true, "", self_hostname,
//! sha512_hex(salt, self_hostname, nonce, key)]`: the key's tenant owns the
//! connection's events. A digest that proves no key gets `["PONG", false,
//! reason, self_hostname, ""]` and the connection is closed. User
//! authentication (username and password) is not used: the key names the
//! tenant.
use super::frame;
use bytes::BytesMut;
use rmpv::Value as Mp;
use sha2::{Digest, Sha512};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A PING is a few hundred bytes; more is not a PING.
const MAX_PING_BYTES: usize = 4096;

/// The keys of a listener, each naming its tenant.
pub struct SharedKeys {
    self_hostname: String,
    keys: Vec<(Vec<u8>, String)>,
}

impl SharedKeys {
    /// `keys`: (shared key, tenant name).
    pub fn new(self_hostname: String, keys: impl IntoIterator<Item = (String, String)>) -> Self {
        SharedKeys {
            self_hostname,
            keys: keys.into_iter().map(|(k, t)| (k.into_bytes(), t)).collect(),
        }
    }

    /// The tenant of the key `digest` proves; every key is tried, so the time
    /// taken does not tell which one matched.
    fn tenant_of(
        &self,
        salt: &[u8],
        hostname: &[u8],
        nonce: &[u8],
        digest: &[u8],
    ) -> Option<(&str, &[u8])> {
        let mut found = None;
        for (key, tenant) in &self.keys {
            let expected = hex_digest(&[salt, hostname, nonce, key]);
            if bool::from(expected.as_bytes().ct_eq(digest)) {
                found = Some((tenant.as_str(), key.as_slice()));
            }
        }
        found
    }
}

/// Why a handshake did not name a tenant.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The PING proved no key (answered with a failing PONG).
    KeyMismatch,
    /// What came was not a PING (answered with a failing PONG).
    Malformed(String),
    /// No PING in time, or the connection failed.
    Gone,
}

fn hex_digest(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    crate::event::hex(&h.finalize())
}

fn bytes(v: &Mp) -> Option<&[u8]> {
    match v {
        Mp::String(s) => Some(s.as_bytes()),
        Mp::Binary(b) => Some(b),
        _ => None,
    }
}

fn pack(v: &Mp) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing to memory");
    out
}

/// Runs the handshake on a fresh connection. On success: the tenant, and
/// what the sender sent after its PING (the start of its first message).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    keys: &SharedKeys,
    timeout: Duration,
) -> Result<(String, BytesMut), Failure> {
    let nonce: [u8; 16] = rand::random();
    let helo = Mp::Array(vec![
        Mp::from("HELO"),
        Mp::Map(vec![
            (Mp::from("nonce"), Mp::Binary(nonce.to_vec())),
            (Mp::from("auth"), Mp::from("")),
            (Mp::from("keepalive"), Mp::from(true)),
        ]),
    ]);
    stream
        .write_all(&pack(&helo))
        .await
        .map_err(|_| Failure::Gone)?;
    let mut buf = BytesMut::with_capacity(1024);
    let len = tokio::time::timeout(timeout, async {
        loop {
            match frame(&buf) {
                Ok(Some(f)) => return Ok(f.len),
                Ok(None) if buf.len() < MAX_PING_BYTES => {}
                Ok(None) => return Err(Failure::Malformed("the PING is too long".into())),
                Err(e) => return Err(Failure::Malformed(e)),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(Failure::Gone),
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| Failure::Gone)??;
    let ping = buf.split_to(len);
    let answer = check_ping(&ping, &nonce, keys);
    let pong = match &answer {
        Ok((_, proof)) => pong(true, "", &keys.self_hostname, proof),
        Err(Failure::KeyMismatch) => pong(false, "shared_key mismatch", &keys.self_hostname, ""),
        Err(Failure::Malformed(why)) => pong(false, why, &keys.self_hostname, ""),
        Err(Failure::Gone) => unreachable!("check_ping reads no stream"),
    };
    stream.write_all(&pong).await.map_err(|_| Failure::Gone)?;
    answer.map(|(tenant, _)| (tenant, buf))
}

fn pong(ok: bool, reason: &str, hostname: &str, proof: &str) -> Vec<u8> {
    pack(&Mp::Array(vec![
        Mp::from("PONG"),
        Mp::from(ok),
        Mp::from(reason),
        Mp::from(hostname),
        Mp::from(proof),
    ]))
}

/// The tenant a PING proves its key for, and Weir's proof of the same key.
fn check_ping(ping: &[u8], nonce: &[u8], keys: &SharedKeys) -> Result<(String, String), Failure> {
    let bad = |why: &str| Failure::Malformed(why.to_string());
    let v =
        rmpv::decode::read_value(&mut &ping[..]).map_err(|e| Failure::Malformed(e.to_string()))?;
    let a = v.as_array().ok_or_else(|| bad("a PING is an array"))?;
    let [kind, hostname, salt, digest, ..] = a.as_slice() else {
        return Err(bad(
            "a PING is [\"PING\", hostname, salt, digest, username, password]",
        ));
    };
    if kind.as_str() != Some("PING") {
        return Err(bad("expected a PING"));
    }
    let (hostname, salt, digest) = (
        bytes(hostname).ok_or_else(|| bad("the PING's hostname is not a string"))?,
        bytes(salt).ok_or_else(|| bad("the PING's salt is not a string"))?,
        bytes(digest).ok_or_else(|| bad("the PING's digest is not a string"))?,
    );
    if hostname == keys.self_hostname.as_bytes() {
        return Err(bad(
            "same hostname between input and output: invalid configuration",
        ));
    }
    let (tenant, key) = keys
        .tenant_of(salt, hostname, nonce, digest)
        .ok_or(Failure::KeyMismatch)?;
    let proof = hex_digest(&[salt, keys.self_hostname.as_bytes(), nonce, key]);
    Ok((tenant.to_string(), proof))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SharedKeys {
        SharedKeys::new(
            "weir".into(),
            [
                ("k-acme".into(), "acme".into()),
                ("k-beta".into(), "beta".into()),
            ],
        )
    }

    fn ping(hostname: &str, salt: &[u8], nonce: &[u8], key: &str) -> Vec<u8> {
        let digest = hex_digest(&[salt, hostname.as_bytes(), nonce, key.as_bytes()]);
        pack(&Mp::Array(vec![
            Mp::from("PING"),
            Mp::from(hostname),
            // Fluent Bit sends its 16 random salt bytes as a str.
            Mp::from(std::str::from_utf8(salt).unwrap()),
            Mp::from(digest),
            Mp::from(""),
            Mp::from(""),
        ]))
    }

    #[test]
    fn the_key_proved_names_the_tenant() {
        let nonce = [7u8; 16];
        let (tenant, proof) =
            check_ping(&ping("fb-1", b"salt", &nonce, "k-beta"), &nonce, &keys()).unwrap();
        assert_eq!(tenant, "beta");
        assert_eq!(proof, hex_digest(&[b"salt", b"weir", &nonce, b"k-beta"]));
    }

    #[test]
    fn a_wrong_key_or_nonce_or_message_is_refused() {
        let nonce = [7u8; 16];
        assert_eq!(
            check_ping(&ping("fb-1", b"salt", &nonce, "k-gamma"), &nonce, &keys()),
            Err(Failure::KeyMismatch)
        );
        // A replayed PING (another connection's nonce).
        assert_eq!(
            check_ping(
                &ping("fb-1", b"salt", &[8u8; 16], "k-acme"),
                &nonce,
                &keys()
            ),
            Err(Failure::KeyMismatch)
        );
        assert!(matches!(
            check_ping(&ping("weir", b"salt", &nonce, "k-acme"), &nonce, &keys()),
            Err(Failure::Malformed(m)) if m.contains("same hostname")
        ));
        assert!(matches!(
            check_ping(&pack(&Mp::from("hi")), &nonce, &keys()),
            Err(Failure::Malformed(_))
        ));
    }
}
