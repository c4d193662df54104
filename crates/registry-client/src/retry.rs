//! Retries: which failures are worth another attempt, and how long to wait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How failed requests are retried: on connection errors, `429 Too Many Requests` and
/// `5xx` (except `501`), with exponential backoff (with jitter), or after the server's
/// `Retry-After` when it sends one (capped by `max_retry_after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The wait before the second attempt; doubled for each further one.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; longer ones fail the request.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let base = self
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        // Up to 25 % jitter, so parallel transfers do not retry in lockstep.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|now| now.subsec_nanos())
            .unwrap_or_default();
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    /// The wait the server asked for (seconds, or an HTTP date), if any and acceptable:
    /// `None` means "use [`Self::backoff`]", `Some(Err(wait))` means "too long".
    pub fn retry_after(&self, headers: &HeaderMap) -> Option<Result<Duration, Duration>> {
        self.retry_after_at(headers, SystemTime::now())
    }

    /// [`Self::retry_after`] with `now` given (a date in the past means no wait).
    fn retry_after_at(
        &self,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Result<Duration, Duration>> {
        let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
        let wait = match value.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => httpdate::parse_http_date(value)
                .ok()?
                .duration_since(now)
                .unwrap_or_default(),
        };
        Some(if wait <= self.max_retry_after {
            Ok(wait)
        } else {
            Err(wait)
        })
    }
}

/// Whether a response status is worth retrying.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// Whether a transport error is worth retrying (connection refused or reset, timeouts,
/// broken bodies), as opposed to a request sealer built wrong or a refused redirect.
pub fn is_retryable_error(error: &reqwest::Error) -> bool {
    !(error.is_builder()
        || error.is_redirect()
        || error.is_decode()
        || crate::address_policy::refusal_in(error).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::default();
        let first = policy.backoff(1);
        assert!(first >= Duration::from_millis(200) && first <= Duration::from_millis(250));
        let third = policy.backoff(3);
        assert!(third >= Duration::from_millis(800) && third <= Duration::from_millis(1000));
        assert!(policy.backoff(30) <= Duration::from_millis(12_500));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let policy = RetryPolicy::default();
        let mut headers = HeaderMap::new();
        assert_eq!(policy.retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(
            policy.retry_after(&headers),
            Some(Ok(Duration::from_secs(3)))
        );
        headers.insert(RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(
            policy.retry_after(&headers),
            Some(Err(Duration::from_secs(3600)))
        );
        // An HTTP date: the time until then (none once it has passed).
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        let date = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            policy.retry_after_at(&headers, date - Duration::from_secs(7)),
            Some(Ok(Duration::from_secs(7)))
        );
        assert_eq!(
            policy.retry_after_at(&headers, date + Duration::from_secs(7)),
            Some(Ok(Duration::ZERO))
        );
        assert_eq!(
            policy.retry_after_at(&headers, date - Duration::from_secs(7200)),
            Some(Err(Duration::from_secs(7200)))
        );
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(policy.retry_after(&headers), None);
        assert!(is_retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_retryable_status(StatusCode::NOT_IMPLEMENTED));
        assert!(!is_retryable_status(StatusCode::NOT_FOUND));
    }
}
