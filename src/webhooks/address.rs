//! Which URLs an endpoint may have: https, and a host that is not inside the
//! network voicehub runs in. A webhook is a request voicehub makes on a
//! user's behalf, so an endpoint at `169.254.169.254` (cloud metadata), at
//! loopback or at a private address would let any user reach what only
//! voicehub can (server-side request forgery).
//!
//! A literal address is checked here, when the endpoint is made or changed;
//! a host name is checked at each delivery, after it is resolved, because
//! DNS can change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// The longest URL accepted.
pub const MAX_URL_CHARS: usize = 2_048;

/// Why a URL may not be an endpoint's, for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    /// Not a URL at all.
    #[error("is not a URL: {0}")]
    Malformed(String),
    /// Too long.
    #[error("must be at most {MAX_URL_CHARS} characters")]
    TooLong,
    /// Not https (or http, where private addresses are allowed).
    #[error("must be an https URL")]
    NotHttps,
    /// `user:password@` in the URL.
    #[error("must not contain a user name or password")]
    Credentials,
    /// No host.
    #[error("must name a host")]
    NoHost,
    /// A literal address that is not public.
    #[error(
        "must not be a loopback, private, link-local, shared, multicast or reserved address ({0})"
    )]
    NotPublic(IpAddr),
}

/// The URL an endpoint may be given, parsed; with `allow_private`, http
/// and any address are accepted too.
///
/// # Errors
/// What is wrong with it.
pub fn check_url(value: &str, allow_private: bool) -> Result<Url, UrlRefused> {
    if value.chars().count() > MAX_URL_CHARS {
        return Err(UrlRefused::TooLong);
    }
    let url = Url::parse(value.trim()).map_err(|e| UrlRefused::Malformed(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(UrlRefused::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    let address = match url.host() {
        None => return Err(UrlRefused::NoHost),
        Some(Host::Domain(_)) => None,
        Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
    };
    if let Some(address) = address
        && !allow_private
        && !is_public(address)
    {
        return Err(UrlRefused::NotPublic(address));
    }
    Ok(url)
}

/// Whether `address` is on the public internet: not loopback, private
/// (RFC 1918, IPv6 unique-local), link-local (cloud metadata included),
/// shared (CGNAT), multicast, unspecified, broadcast, documentation,
/// benchmarking or reserved; an IPv6 address that maps or embeds an IPv4
/// one is judged by that one, and refused if it is not a plain IPv6 one.
#[must_use]
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [first, second, third, _] = a.octets();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_documentation()
        || first == 0
        // 100.64.0.0/10: shared address space (carrier-grade NAT).
        || (first == 100 && (64..128).contains(&second))
        // 192.0.0.0/24: IETF protocol assignments.
        || (first == 192 && second == 0 && third == 0)
        // 198.18.0.0/15: benchmarking.
        || (first == 198 && (second == 18 || second == 19))
        // 240.0.0.0/4: reserved.
        || first >= 240)
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    let segments = a.segments();
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible), 64:ff9b::/96
    // (NAT64): an IPv4 address in IPv6 clothes is refused outright, so no
    // spelling reaches a private one.
    let embeds_v4 = a.to_ipv4_mapped().is_some()
        || (segments[..6] == [0; 6] && !a.is_loopback() && !a.is_unspecified())
        || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    !(embeds_v4
        || a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        // fc00::/7: unique local.
        || (segments[0] & 0xfe00) == 0xfc00
        // fe80::/10: link-local.
        || (segments[0] & 0xffc0) == 0xfe80
        // 2001:db8::/32: documentation.
        || (segments[0] == 0x2001 && segments[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_https_urls_pass() {
        for url in [
            "https://hooks.example.com/voicehub",
            "https://93.184.215.14/hook",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook",
            "https://hooks.example.com:8443/a?b=c",
        ] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
        let refused = [
            ("http://hooks.example.com/", UrlRefused::NotHttps),
            ("ftp://hooks.example.com/", UrlRefused::NotHttps),
            (
                "https://user:pw@hooks.example.com/",
                UrlRefused::Credentials,
            ),
            (
                "https://127.0.0.1/",
                UrlRefused::NotPublic([127, 0, 0, 1].into()),
            ),
            (
                "https://10.0.0.1/",
                UrlRefused::NotPublic([10, 0, 0, 1].into()),
            ),
            (
                "https://169.254.169.254/latest/meta-data",
                UrlRefused::NotPublic([169, 254, 169, 254].into()),
            ),
            (
                "https://[::1]/",
                UrlRefused::NotPublic(Ipv6Addr::LOCALHOST.into()),
            ),
        ];
        for (url, why) in refused {
            assert_eq!(check_url(url, false).unwrap_err(), why, "{url}");
        }
        assert!(matches!(
            check_url("not a url", false),
            Err(UrlRefused::Malformed(_))
        ));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert_eq!(check_url(&long, false).unwrap_err(), UrlRefused::TooLong);
    }

    #[test]
    fn development_allows_http_and_private_addresses() {
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("https://10.0.0.1/", true).is_ok());
        assert_eq!(
            check_url("ftp://127.0.0.1/", true).unwrap_err(),
            UrlRefused::NotHttps
        );
    }

    #[test]
    fn every_spelling_of_an_inside_address_is_not_public() {
        for address in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert!(!is_public(ip), "{address} is not public");
        }
        for address in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert!(is_public(ip), "{address} is public");
        }
    }
}
