//! Request rates on every HTTP endpoint (the page, status, the log, administration and `/ws`
//! upgrades), per source address: [`RequestRate`] per second with bursts of twice that, kept by
//! `governor`'s keyed GCRA limiter. A request over its address's rate is answered 429 with
//! `Retry-After` before any route runs. IPv6 addresses count by their /64 (one host's whole
//! allocation), so rotating addresses within it buys nothing. Addresses idle for a while are
//! forgotten, so the limiter's memory follows the addresses active now.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Requests per second from one address, on average; 0 turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRate(pub u32);

impl Default for RequestRate {
    /// 20 a second (bursts of 40): a page load is about ten requests, a status poll one a
    /// second; a script that floods status or log pages is held to a trickle.
    fn default() -> Self {
        RequestRate(20)
    }
}

/// How often addresses that have gone quiet are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The limiter the routes share (none when the rate is 0).
#[derive(Clone, Default)]
pub(crate) struct HttpLimit {
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl HttpLimit {
    /// A limiter at `rate`, and (within a Tokio runtime) the task that forgets quiet addresses
    /// while the limiter lives.
    pub(crate) fn new(rate: RequestRate) -> Self {
        let Some(per_second) = NonZeroU32::new(rate.0) else {
            return HttpLimit::default();
        };
        let burst = per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        let limiter = Arc::new(RateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        ));
        let weak = Arc::downgrade(&limiter);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(FORGET_EVERY).await;
                    let Some(l) = weak.upgrade() else { return };
                    l.retain_recent();
                    l.shrink_to_fit();
                }
            });
        }
        HttpLimit {
            limiter: Some(limiter),
        }
    }

    /// Whether a request from `address` may go on now; otherwise how long until it may.
    pub(crate) fn check(&self, address: IpAddr) -> Result<(), Duration> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        l.check_key(&key_of(address))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// What an address counts as: itself (IPv4), or its /64 (IPv6).
fn key_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The middleware: 429 with `Retry-After` (whole seconds, at least 1) over the rate.
pub(crate) async fn limit(State(l): State<HttpLimit>, req: Request, next: Next) -> Response {
    match l.check(crate::gate::peer(req.extensions())) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many requests from this address; try again in {secs} s"),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_waits_and_others_are_not_held() {
        let l = HttpLimit::new(RequestRate(5));
        let a = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..10 {
            assert!(l.check(a).is_ok(), "a burst of twice the rate passes");
        }
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(l.check(IpAddr::from([127, 0, 0, 2])).is_ok());
        assert!(HttpLimit::new(RequestRate(0)).check(a).is_ok(), "0 is off");
    }

    #[test]
    fn ipv6_counts_by_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key_of(a), key_of(b));
        assert_ne!(key_of(a), key_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key_of(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
