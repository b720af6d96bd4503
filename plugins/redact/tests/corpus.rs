//! Generated corpus: plant secrets of every kind in random text, run the plugin through the real encoding, and
//! check that every planted secret is masked and that 16-digit numbers failing Luhn are left alone.

use std::net::Ipv6Addr;

use redact::{luhn_valid, Redact};
use serde_json::{json, Value};
use weir_sdk::{testing, Event, Verdict};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| *self.pick(alphabet) as char).collect()
    }
}

const WORDS: &[&str] = &[
    "the",
    "request",
    "failed",
    "user",
    "login",
    "ok",
    "payment",
    "processed",
    "for",
    "order",
    "retry",
    "upstream",
    "timeout",
    "GET",
    "POST",
    "status",
    "session",
    "closed",
    "card",
    "mail",
    "token",
    "from",
    "to",
    "with",
];
const DIGITS: &[u8] = b"0123456789";
const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

fn luhn_complete(rng: &mut Rng, len: usize) -> String {
    let mut digits = format!("{}", rng.range(1, 9));
    digits.push_str(&rng.chars(DIGITS, len - 2));
    for check in 0..10u8 {
        let candidate = format!("{digits}{check}");
        if luhn_valid(candidate.as_bytes()) {
            return candidate;
        }
    }
    unreachable!()
}

fn group(digits: &str, sizes: &[usize], sep: char) -> String {
    let mut out = String::new();
    let mut pos = 0;
    for (i, s) in sizes.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.push_str(&digits[pos..pos + s]);
        pos += s;
    }
    out
}

fn card(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => {
            let len = rng.range(13, 19) as usize;
            luhn_complete(rng, len)
        }
        1 => {
            let d = luhn_complete(rng, 16);
            let sep = *rng.pick(&[' ', '-']);
            group(&d, &[4, 4, 4, 4], sep)
        }
        2 => {
            let d = luhn_complete(rng, 15);
            group(&d, &[4, 6, 5], *rng.pick(&[' ', '-']))
        }
        _ => {
            let d = luhn_complete(rng, 19);
            group(&d, &[4, 4, 4, 4, 3], ' ')
        }
    }
}

fn non_luhn_16(rng: &mut Rng) -> String {
    let valid = luhn_complete(rng, 16);
    let last = valid.as_bytes()[15] - b'0';
    let bad = format!("{}{}", &valid[..15], (last + 1 + rng.below(9) as u8) % 10);
    assert!(!luhn_valid(bad.as_bytes()));
    if rng.below(2) == 0 {
        bad
    } else {
        group(&bad, &[4, 4, 4, 4], *rng.pick(&[' ', '-']))
    }
}

fn email(rng: &mut Rng) -> String {
    let user = format!(
        "{}.{}{}",
        rng.chars(LOWER, 5),
        rng.chars(LOWER, 3),
        rng.range(0, 99)
    );
    let tld = *rng.pick(&["com", "io", "co.uk", "org"]);
    format!("{user}@{}.{tld}", rng.chars(LOWER, 6))
}

fn ipv4(rng: &mut Rng) -> String {
    format!(
        "{}.{}.{}.{}",
        rng.range(1, 255),
        rng.below(256),
        rng.below(256),
        rng.range(1, 254)
    )
}

fn ipv6(rng: &mut Rng) -> String {
    let mut segs = [0u16; 8];
    for s in segs.iter_mut() {
        *s = if rng.below(3) == 0 {
            0
        } else {
            rng.next() as u16
        };
    }
    segs[0] = 0x2001;
    segs[7] = segs[7].max(1);
    let addr = Ipv6Addr::from(segs);
    match rng.below(3) {
        0 => addr.to_string(), // compressed
        1 => segs
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join(":"), // full
        _ => format!(
            "fe80::{:x}:{:x}",
            rng.next() as u16 | 1,
            rng.next() as u16 | 1
        ),
    }
}

fn aws_key(rng: &mut Rng) -> String {
    format!(
        "{}{}",
        rng.pick(&["AKIA", "ASIA"]),
        rng.chars(UPPER_DIGITS, 16)
    )
}

fn jwt(rng: &mut Rng) -> String {
    let n1 = rng.range(10, 30) as usize;
    let n2 = rng.range(20, 60) as usize;
    let n3 = rng.range(20, 43) as usize;
    format!(
        "eyJ{}.eyJ{}.{}",
        rng.chars(B64URL, n1),
        rng.chars(B64URL, n2),
        rng.chars(B64URL, n3)
    )
}

fn bearer(rng: &mut Rng) -> String {
    let n = rng.range(20, 40) as usize;
    rng.chars(B64URL, n)
}

struct Planted {
    secrets: Vec<(String, &'static str)>,
    decoys: Vec<String>,
}

fn sentence(rng: &mut Rng, planted: &mut Planted) -> String {
    let mut parts: Vec<String> = Vec::new();
    for _ in 0..rng.range(3, 12) {
        parts.push(rng.pick(WORDS).to_string());
        if rng.below(3) != 0 {
            continue;
        }
        let (secret, kind) = match rng.below(8) {
            0 => (card(rng), "credit_card"),
            1 => (email(rng), "email"),
            2 => (ipv4(rng), "ipv4"),
            3 => (ipv6(rng), "ipv6"),
            4 => (aws_key(rng), "aws_access_key"),
            5 => (jwt(rng), "jwt"),
            6 => {
                let t = bearer(rng);
                parts.push("Bearer".to_string());
                (t, "bearer_token")
            }
            _ => {
                let d = non_luhn_16(rng);
                parts.push(d.clone());
                planted.decoys.push(d);
                continue;
            }
        };
        let punct = *rng.pick(&["", "", ",", ";", "."]);
        parts.push(format!("{secret}{punct}"));
        planted.secrets.push((secret, kind));
    }
    parts.join(" ")
}

#[test]
fn every_planted_secret_is_masked_and_non_luhn_numbers_survive() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut p: Redact = testing::init(Value::Null).unwrap();
    let mut total_secrets = 0;
    let mut total_decoys = 0;
    let mut kinds_seen = std::collections::BTreeSet::new();

    for _batch in 0..20 {
        let mut events = Vec::new();
        let mut plants = Vec::new();
        for _ in 0..50 {
            let mut planted = Planted {
                secrets: Vec::new(),
                decoys: Vec::new(),
            };
            let message = sentence(&mut rng, &mut planted);
            let attr = sentence(&mut rng, &mut planted);
            let mut ev = Event::with_message(message);
            ev.attributes
                .insert("detail".into(), json!({"text": attr, "n": 1}));
            events.push(ev);
            plants.push(planted);
        }
        let results = testing::run(&mut p, &events);
        for ((verdict, out), planted) in results.iter().zip(&plants) {
            assert_eq!(*verdict, Verdict::Keep);
            let text = format!(
                "{} || {}",
                out.message,
                out.attributes["detail"]["text"].as_str().unwrap()
            );
            for (secret, kind) in &planted.secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{kind} `{secret}` not masked in: {text}"
                );
                kinds_seen.insert(*kind);
            }
            let masks = text.matches("[REDACTED:").count();
            assert_eq!(
                masks,
                planted.secrets.len(),
                "one mask per planted secret in: {text}"
            );
            for (_, kind) in &planted.secrets {
                assert!(
                    text.contains(&format!("[REDACTED:{kind}]")),
                    "no {kind} mask in: {text}"
                );
            }
            for d in &planted.decoys {
                assert!(
                    text.contains(d.as_str()),
                    "non-Luhn `{d}` was altered in: {text}"
                );
            }
            total_secrets += planted.secrets.len();
            total_decoys += planted.decoys.len();
        }
    }
    assert_eq!(kinds_seen.len(), 7, "{kinds_seen:?}");
    assert!(total_secrets > 1000, "{total_secrets}");
    assert!(total_decoys > 100, "{total_decoys}");
    eprintln!("corpus: {total_secrets} secrets masked, {total_decoys} non-Luhn 16-digit numbers left alone");
}

#[test]
fn last4_style_keeps_the_last_four_characters_of_each_card() {
    let mut rng = Rng(42);
    let mut p: Redact =
        testing::init(json!({"style": "last4", "detectors": ["credit_card"]})).unwrap();
    for _ in 0..200 {
        let c = card(&mut rng);
        let (_, out) = testing::run_one(&mut p, Event::with_message(format!("pay {c} now")));
        let expected: String = "*".repeat(c.chars().count() - 4) + &c[c.len() - 4..];
        assert_eq!(out.message, format!("pay {expected} now"));
    }
}
