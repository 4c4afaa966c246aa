//! Admission of contributor connections: at most [`ConnectionLimits::total`] at once, and at
//! most [`ConnectionLimits::per_address`] from one IP address, counted from the upgrade to the
//! socket's close. A connection over either limit is refused before the upgrade with 503 and
//! the limit it hit, so no script can hold the coordinator's sockets and tasks by the thousand
//! from one machine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A connection's peer, as `listen.rs` puts it in each request's `ConnectInfo`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) std::net::SocketAddr);

/// The address a request came from (this machine when served without connect info, as the
/// in-process tests are): what the `/ws` gate counts and the admin throttle keys on.
pub(crate) fn peer(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0 .0.ip())
}

/// The limits on contributor connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once, in all.
    pub total: usize,
    /// Connections at once from one IP address.
    pub per_address: usize,
}

impl Default for ConnectionLimits {
    /// 20,000 in all and 16 per address: a household behind one address may run a few
    /// browsers and workers; a public coordinator behind a proxy that hides addresses must
    /// raise the second.
    fn default() -> Self {
        ConnectionLimits {
            total: 20_000,
            per_address: 16,
        }
    }
}

/// Which limit refused a connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The coordinator holds its most connections.
    #[error("this coordinator holds its most connections ({0}); try again later")]
    Full(usize),
    /// The address holds its most connections.
    #[error("{address} holds its most connections to this coordinator ({limit})")]
    Address {
        /// The address.
        address: IpAddr,
        /// Its limit.
        limit: usize,
    },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The count of open connections, shared by the `/ws` route.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate {
    limits: ConnectionLimits,
    counts: Arc<Mutex<Counts>>,
}

/// An admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct Admitted {
    address: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Gate {
    /// A gate with `limits`.
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        Gate {
            limits,
            counts: Arc::default(),
        }
    }

    /// Admits a connection from `address`, or says which limit it is over.
    pub(crate) fn admit(&self, address: IpAddr) -> Result<Admitted, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.limits.total {
            return Err(Refused::Full(self.limits.total));
        }
        let n = c.by_address.get(&address).copied().unwrap_or(0);
        if n >= self.limits.per_address {
            return Err(Refused::Address {
                address,
                limit: self.limits.per_address,
            });
        }
        c.total += 1;
        c.by_address.insert(address, n + 1);
        Ok(Admitted {
            address,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                c.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_held_to_both_limits_and_give_their_place_back() {
        let gate = Gate::new(ConnectionLimits {
            total: 3,
            per_address: 2,
        });
        let (a, b, c) = (
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([127, 0, 0, 2]),
            IpAddr::from([127, 0, 0, 3]),
        );
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(
            gate.admit(a).unwrap_err(),
            Refused::Address {
                address: a,
                limit: 2
            }
        );
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(c).unwrap_err(), Refused::Full(3));
        drop(a1);
        assert!(gate.admit(c).is_ok());
        assert!(!gate.counts.lock().unwrap().by_address.contains_key(&c));
    }
}
