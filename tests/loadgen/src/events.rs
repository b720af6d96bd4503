//! Datadog-shaped log events and request bodies for the load generator.
//! Content varies (hosts, services, paths, ids) so compression ratios and
//! parsing costs look like real agent traffic rather than one repeated line.
use std::fmt::Write;

/// xorshift64*: random enough to vary log content and nearly free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero forever.
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const SERVICES: &[&str] = &[
    "checkout", "payments", "search", "auth", "catalog", "cart", "shipping", "gateway",
];
const SOURCES: &[&str] = &["nginx", "java", "python", "go", "envoy"];
const METHODS: &[&str] = &["GET", "GET", "GET", "POST", "PUT", "DELETE"];
const PATHS: &[&str] = &[
    "/api/v1/orders",
    "/api/v1/users",
    "/api/v2/search",
    "/healthz",
    "/api/v1/cart/items",
    "/login",
    "/static/app.js",
];
const WORDS: &[&str] = &[
    "upstream", "latency", "cache", "miss", "hit", "retry", "pool", "conn", "timeout", "ok",
    "user", "session", "token", "refresh", "db", "query", "rows", "shard", "replica", "lag",
    "queue", "depth", "worker", "idle",
];

/// One event's JSON, padded (in its message) to about `target` bytes. Only
/// characters that need no JSON escaping are used, so the text is valid as written.
pub fn event(rng: &mut Rng, target: usize, timestamp_ms: i64, out: &mut String) {
    let start = out.len();
    let (status, code) = match rng.below(100) {
        0..=79 => ("info", 200),
        80..=91 => ("warn", 404),
        92..=97 => ("error", 500),
        _ => ("debug", 200),
    };
    let method = rng.pick(METHODS);
    let path = rng.pick(PATHS);
    let duration = rng.below(2000);
    let _ = write!(
        out,
        "{{\"message\":\"{method} {path}/{} {code} {duration}ms",
        rng.below(100_000)
    );
    let mut tail = String::with_capacity(200);
    let _ = write!(
        tail,
        "\",\"status\":\"{status}\",\"timestamp\":{timestamp_ms},\"hostname\":\"web-{:03}\",\"service\":\"{}\",\"ddsource\":\"{}\",\"ddtags\":\"env:prod,version:1.{}\",\"http\":{{\"status_code\":{code}}},\"duration_ms\":{duration}}}",
        rng.below(200),
        rng.pick(SERVICES),
        rng.pick(SOURCES),
        rng.below(10),
    );
    // Pad the message with words until the whole event reaches the target size.
    while out.len() - start + tail.len() < target {
        out.push(' ');
        out.push_str(rng.pick(WORDS));
        match rng.below(8) {
            0 => {
                let _ = write!(out, "={}", rng.below(10_000));
            }
            1 => {
                let _ = write!(out, " id={:08x}", rng.next_u64() as u32);
            }
            _ => {}
        }
    }
    out.push_str(&tail);
}

/// A JSON array of `batch` events.
pub fn body(rng: &mut Rng, batch: usize, event_bytes: usize, timestamp_ms: i64) -> String {
    let mut out = String::with_capacity(batch * (event_bytes + 16) + 2);
    out.push('[');
    for i in 0..batch {
        if i > 0 {
            out.push(',');
        }
        event(rng, event_bytes, timestamp_ms, &mut out);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json_of_the_asked_shape() {
        let mut rng = Rng::new(7);
        let b = body(&mut rng, 500, 250, 1_700_000_000_000);
        let v: Vec<serde_json::Value> = serde_json::from_str(&b).unwrap();
        assert_eq!(v.len(), 500);
        let avg = (b.len() - 2) / 500;
        assert!((245..=275).contains(&avg), "average event is {avg} bytes");
        for key in [
            "message",
            "status",
            "hostname",
            "service",
            "ddsource",
            "ddtags",
            "http",
            "duration_ms",
        ] {
            assert!(v[0].get(key).is_some(), "missing {key}");
        }
        // Not all alike.
        assert_ne!(v[0]["message"], v[1]["message"]);
    }
}
