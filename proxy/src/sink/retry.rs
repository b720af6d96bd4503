//! When to try a failed batch again: exponential backoff with full jitter,
//! never sooner than a backend's Retry-After.
use std::time::{Duration, SystemTime};

/// Full jitter: a uniform draw in [0, min(max, initial * 2^attempt)].
pub fn backoff(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let ceiling = initial
        .saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX))
        .min(max);
    let jittered = ceiling.mul_f64(rand::random::<f64>());
    match retry_after {
        Some(ra) => jittered.max(ra.min(max)),
        None => jittered,
    }
}

/// Parses a Retry-After header: delta seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        for _ in 0..200 {
            assert!(backoff(0, i, m, None) <= i);
            assert!(backoff(3, i, m, None) <= Duration::from_millis(800));
            assert!(backoff(40, i, m, None) <= m);
            assert!(backoff(0, i, m, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
            assert!(backoff(0, i, m, Some(Duration::from_secs(60))) <= m);
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
