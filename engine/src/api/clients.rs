//! What one client may take of the API: a request rate (a token bucket per client
//! address, `429 rate_limited` past it) and live-log followers (at most so many per
//! client and in all, `503 too_many_followers` past either). Both answers carry
//! `Retry-After`. A client is its IPv4 address, or the /64 an IPv6 address is in
//! (one host holds a whole /64). The table of clients is bounded: when full, idle
//! clients are forgotten first, and a newcomer finding no room is refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, error::Code};

/// The most clients whose buckets are remembered at once.
const MAX_CLIENTS: usize = 65_536;

/// The address of the connection a request came on, set by [`super::serve`].
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The per-client limits (`SLIPWAY_HTTP_RATE`, `SLIPWAY_HTTP_BURST`,
/// `SLIPWAY_MAX_FOLLOWERS`, `SLIPWAY_MAX_FOLLOWERS_PER_CLIENT`).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Requests a second a client may make, on average.
    pub rate: f64,
    /// Requests a client may make at once after a quiet spell.
    pub burst: u32,
    /// Live-log streams open at once, in all.
    pub max_followers: usize,
    /// Live-log streams open at once from one client.
    pub max_followers_per_client: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits { rate: 20.0, burst: 100, max_followers: 1000, max_followers_per_client: 16 }
    }
}

/// Who is using what, shared by every connection.
#[derive(Debug)]
pub struct Clients {
    limits: ClientLimits,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    followers: HashMap<IpAddr, usize>,
    total_followers: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One open live-log stream; counted until dropped.
#[derive(Debug)]
pub struct FollowerSlot {
    clients: Arc<Clients>,
    client: IpAddr,
}

impl Clients {
    pub fn new(limits: ClientLimits) -> Arc<Self> {
        Arc::new(Clients { limits, table: Mutex::new(Table::default()) })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one request from `addr`'s bucket; `Err(wait)` when it is empty.
    pub fn take(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.limits.rate, f64::from(self.limits.burst));
        let client = client_of(addr);
        let mut table = self.table();
        if !table.buckets.contains_key(&client) && table.buckets.len() >= MAX_CLIENTS {
            // Forget the clients whose buckets have filled up again: they are idle.
            table.buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if table.buckets.len() >= MAX_CLIENTS {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = table.buckets.entry(client).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// A slot for one more live-log stream from `addr`, if the caps allow it.
    pub fn follow(self: &Arc<Self>, addr: IpAddr) -> Result<FollowerSlot, ApiError> {
        let client = client_of(addr);
        let mut table = self.table();
        let mine = table.followers.get(&client).copied().unwrap_or(0);
        let full = if table.total_followers >= self.limits.max_followers {
            Some(format!("{} live-log streams are open, the most this server serves", table.total_followers))
        } else if mine >= self.limits.max_followers_per_client {
            Some(format!("this client has {mine} live-log streams open, the most one client may"))
        } else {
            None
        };
        if let Some(message) = full {
            return Err(ApiError::new(Code::TooManyFollowers, message).retry_after(Duration::from_secs(5)));
        }
        *table.followers.entry(client).or_insert(0) += 1;
        table.total_followers += 1;
        Ok(FollowerSlot { clients: self.clone(), client })
    }
}

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        let mut table = self.clients.table();
        table.total_followers = table.total_followers.saturating_sub(1);
        if let Some(n) = table.followers.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                table.followers.remove(&self.client);
            }
        }
    }
}

/// The client an address belongs to: itself, or its /64 for IPv6.
fn client_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Middleware: every request but `/healthz` and `/metrics` takes from its client's
/// bucket, or is answered `429` with `Retry-After`.
pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let exempt = matches!(request.uri().path(), "/healthz" | "/metrics");
    if let (false, Some(ClientAddr(addr))) = (exempt, request.extensions().get::<ClientAddr>().copied())
        && let Err(wait) = state.clients.take(addr, Instant::now())
    {
        let error = ApiError::new(Code::RateLimited, "too many requests from this client; slow down");
        return error.retry_after(wait).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32) -> ClientLimits {
        ClientLimits { rate, burst, ..Default::default() }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait() {
        let clients = Clients::new(limits(2.0, 3));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(clients.take(a, t0), Ok(()));
        }
        let wait = clients.take(a, t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(clients.take(b, t0), Ok(()), "another client has its own bucket");
        assert_eq!(clients.take(a, t0 + Duration::from_millis(500)), Ok(()), "the rate refills it");
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let clients = Clients::new(limits(1.0, 1));
        let t0 = Instant::now();
        assert_eq!(clients.take("2001:db8::1".parse().unwrap(), t0), Ok(()));
        assert!(clients.take("2001:db8::ffff:2".parse().unwrap(), t0).is_err(), "same /64, same bucket");
        assert_eq!(clients.take("2001:db8:0:1::1".parse().unwrap(), t0), Ok(()));
    }

    #[test]
    fn followers_are_capped_per_client_and_in_all_and_freed_when_dropped() {
        let clients =
            Clients::new(ClientLimits { max_followers: 3, max_followers_per_client: 2, ..Default::default() });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = clients.follow(ip("192.0.2.1")).unwrap();
        let _a2 = clients.follow(ip("192.0.2.1")).unwrap();
        let refused = clients.follow(ip("192.0.2.1")).unwrap_err();
        assert_eq!(refused.code, Code::TooManyFollowers);
        let _b1 = clients.follow(ip("192.0.2.2")).unwrap();
        assert!(clients.follow(ip("192.0.2.3")).is_err(), "the total cap");
        drop(a1);
        assert!(clients.follow(ip("192.0.2.3")).is_ok(), "a closed stream frees its slot");
    }
}
