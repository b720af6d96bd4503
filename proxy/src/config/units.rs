//! Value types that YAML fields are written in: durations ("250ms", "30s"),
//! byte sizes ("5MiB", "4MB", 1024) and secrets ("${ENV_VAR}" or a literal).
use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A duration written the humane way: `500ms`, `10s`, `5m`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?} ({e}); expected e.g. \"500ms\", \"10s\", \"5m\""
            ))
        })
    }
}

/// A byte size: a plain integer, or a number with a unit (B, KB, MB, GB, KiB, MiB, GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

/// `bytes` the way a config writes them: `2GiB`, `16MiB`, `512KiB`, or a plain number.
pub fn format_bytes(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("invalid byte size {s:?}; expected e.g. 1024, \"64KiB\", \"5MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
            "unknown byte size unit {other:?} in {s:?}; expected B, KB, MB, GB, KiB, MiB or GiB"
        ))
        }
    };
    Ok((num * mult as f64) as u64)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size such as 1048576, \"64KiB\" or \"5MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A secret: an API key or credential. Written literally, as `${ENV_VAR}`
/// (expanded when the config loads), or as `file:PATH`: the file's contents,
/// without trailing whitespace, read at every load and reload (a mounted
/// Kubernetes secret or Vault agent file rotates without a restart). Never
/// printed: Debug shows `<redacted>`, errors name the file, not its contents.
/// Compared by value in constant time (reload tells a changed credential).
#[derive(Clone)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A `file:` secret's value; the error names the file, never what it holds.
fn read_secret_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the secret file {path}: {e}"))?;
    let value = text.trim_end();
    if value.is_empty() {
        return Err(format!("the secret file {path} is empty"));
    }
    Ok(value.to_string())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `${ENV}` was expanded with the rest of the file (config/env.rs). A key of
        // digits written bare (`api_keys: [123456]`, or `${KEY}` holding digits) is
        // read by YAML as a number: taken as its text.
        struct V;
        impl de::Visitor<'_> for V {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        let value = d.deserialize_any(V)?;
        let value = match value.strip_prefix("file:") {
            Some(path) => read_secret_file(path).map_err(de::Error::custom)?,
            None => value,
        };
        if value.is_empty() {
            return Err(de::Error::custom("secret is empty"));
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("5MiB").unwrap(), 5 * 1024 * 1024);
        assert_eq!(parse_byte_size("4 MB").unwrap(), 4_000_000);
        assert_eq!(parse_byte_size("1024").unwrap(), 1024);
        assert_eq!(parse_byte_size("1.5KiB").unwrap(), 1536);
        assert!(parse_byte_size("5 parsecs").is_err());
        assert!(parse_byte_size("MiB").is_err());
    }

    #[test]
    fn a_secret_may_come_from_a_file_read_at_each_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first-key\n").unwrap();
        let yaml = format!("file:{}", path.display());
        let s: Secret = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(s.expose(), "first-key");
        std::fs::write(&path, "rotated-key").unwrap();
        let s: Secret = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(s.expose(), "rotated-key");
        std::fs::write(&path, "\n").unwrap();
        let e = serde_yaml::from_str::<Secret>(&yaml)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty") && e.contains("key"), "{e}");
        let e = serde_yaml::from_str::<Secret>("file:/nonexistent/weir-key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/weir-key"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
