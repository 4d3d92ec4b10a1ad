//! The one retry policy of the registry client: which failures are retried,
//! how long to wait (the registry's `Retry-After`, else exponential backoff
//! with jitter), and how many times. Requests and resumed blob downloads
//! both go through [`Retry`].

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured; a registry asking for more is not
/// retried (its answer is returned as it is).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest backoff between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Whether a response status is worth retrying (overload, gateway trouble).
pub fn retryable_status(status: u16) -> bool {
    status == 429 || matches!(status, 500 | 502 | 503 | 504)
}

/// Whether a transport error is worth retrying.
pub fn retryable_error(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

/// The wait before retry number `attempt` (0-based) (pure): `retry_after`
/// when the registry sent one, else `base · 2^attempt` (at most
/// [`MAX_BACKOFF`]) with "equal jitter" — half of it fixed, half scaled by
/// `jitter` ∈ [0, 1) — so clients that failed together do not come back
/// together.
pub fn delay(base: Duration, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    if let Some(d) = retry_after {
        return d;
    }
    let full = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// A random number in [0, 1) (std's per-process random hash keys and the clock).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A `Retry-After` value (delay-seconds or an HTTP-date) as a wait from
/// `now` (pure). A date in the past is no wait; junk is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP/1.1
/// senders must use (pure).
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.split_once(", ")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = f.as_slice() else {
        return None;
    };
    let day: u32 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u32
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (*h * 3600 + *m * 60 + *sec) as i64;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Attempts of one request (or one blob download's resumes).
#[derive(Debug)]
pub struct Retry {
    attempt: u32,
    max: u32,
    base: Duration,
}

impl Retry {
    pub fn new(max: u32, base: Duration) -> Retry {
        Retry {
            attempt: 0,
            max,
            base,
        }
    }

    /// Retries done so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a failure: when it is `retryable` and retries are left (and any
    /// `Retry-After` is at most [`MAX_RETRY_AFTER`]), wait and return `true`.
    pub fn again(&mut self, retryable: bool, retry_after: Option<Duration>) -> bool {
        if !retryable || self.attempt >= self.max {
            return false;
        }
        if retry_after.is_some_and(|d| d > MAX_RETRY_AFTER) {
            tracing::debug!(
                ?retry_after,
                "the registry asks to wait too long: not retrying"
            );
            return false;
        }
        let wait = delay(self.base, self.attempt, retry_after, jitter());
        tracing::debug!(attempt = self.attempt, ?wait, "retrying");
        std::thread::sleep(wait);
        self.attempt += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_back_off_with_jitter_and_honour_retry_after() {
        let base = Duration::from_millis(250);
        assert_eq!(delay(base, 0, None, 0.0), Duration::from_millis(125));
        assert_eq!(delay(base, 0, None, 0.5), Duration::from_micros(187_500));
        assert!(delay(base, 0, None, 0.999_999) < base);
        assert_eq!(delay(base, 2, None, 0.0), Duration::from_millis(500));
        assert_eq!(delay(base, 30, None, 0.5), MAX_BACKOFF * 3 / 4);
        assert_eq!(
            delay(base, 3, Some(Duration::from_secs(7)), 0.3),
            Duration::from_secs(7)
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // RFC 9110's example date is 784111777 s after the epoch.
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:60 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_835_481_600))
        );
        // In the past: no wait.
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for junk in [
            "",
            "soon",
            "-5",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:61:37 GMT",
        ] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn retries_stop_when_told() {
        let mut r = Retry::new(2, Duration::ZERO);
        assert!(!r.again(false, None), "not retryable");
        assert!(
            !r.again(true, Some(Duration::from_secs(3600))),
            "too long a wait"
        );
        assert!(r.again(true, Some(Duration::ZERO)));
        assert!(r.again(true, None));
        assert!(!r.again(true, None), "no retries left");
        assert_eq!(r.attempts(), 2);
    }
}
