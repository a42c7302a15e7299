//! Who is calling, by address: the basis of CIDR allowlists and failed-auth throttling.
//!
//! The client is the TCP peer, unless that peer is one of the hospital's own load balancers
//! (`server.trusted_proxies`). Then the client is the right-most `X-Forwarded-For` entry that
//! is not itself a trusted proxy: entries to its left were written by whoever sent the
//! request and prove nothing. A header from an untrusted peer is never read.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Resolves the client address for a request that arrived from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted_proxies) {
        return peer;
    }
    // Walk the chain from the nearest hop outwards.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| {
            let entries: Vec<&str> = value
                .to_str()
                .map(|v| v.split(',').collect())
                .unwrap_or_default();
            entries.into_iter().rev()
        })
        .map(str::trim);
    let mut client = peer;
    for hop in hops {
        let Some(address) = parse_hop(hop) else {
            // A malformed entry ends what can be believed.
            break;
        };
        client = address;
        if !is_trusted(address, trusted_proxies) {
            break;
        }
    }
    client
}

fn is_trusted(address: IpAddr, trusted_proxies: &[IpNet]) -> bool {
    trusted_proxies.iter().any(|net| net.contains(&address))
}

/// Accepts `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]` and either with a `:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(|address| address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", HeaderValue::from_static(value));
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = client_ip(
            "203.0.113.9".parse().unwrap(),
            &headers(&["1.2.3.4"]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_yields_right_most_untrusted_entry() {
        let trusted = nets(&["10.0.0.0/8"]);
        let spoofed = headers(&["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &spoofed, &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn malformed_entry_stops_the_walk_and_ports_are_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            &headers(&["garbage, 10.0.0.3"]),
            &trusted,
        );
        assert_eq!(ip, "10.0.0.3".parse::<IpAddr>().unwrap());
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            &headers(&["[2001:db8::1]:443"]),
            &trusted,
        );
        assert_eq!(ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_ipv4_peers_are_canonical() {
        let ip = client_ip("::ffff:192.0.2.1".parse().unwrap(), &HeaderMap::new(), &[]);
        assert_eq!(ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
