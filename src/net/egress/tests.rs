//! The policy matrix (every reserved range, every spelling) and the dialler on names.

use super::*;
use crate::net::target::Host;
use ipnet::IpNet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

fn sa(s: &str) -> SocketAddr {
    SocketAddr::new(s.parse().unwrap(), 443)
}

/// Every reserved range (S9 and the documentation/relay ranges beside it) with addresses at
/// its start, inside and at its end.
const MATRIX: &[(&str, &[&str])] = &[
    ("0.0.0.0/8", &["0.0.0.0", "0.1.2.3", "0.255.255.255"]),
    ("10.0.0.0/8", &["10.0.0.0", "10.1.2.3", "10.255.255.255"]),
    (
        "100.64.0.0/10",
        &["100.64.0.0", "100.100.100.200", "100.127.255.255"],
    ),
    (
        "127.0.0.0/8",
        &["127.0.0.0", "127.0.0.1", "127.255.255.255"],
    ),
    (
        "169.254.0.0/16",
        &["169.254.0.0", "169.254.169.254", "169.254.255.255"],
    ),
    (
        "172.16.0.0/12",
        &["172.16.0.0", "172.20.1.2", "172.31.255.255"],
    ),
    ("192.0.0.0/24", &["192.0.0.0", "192.0.0.170", "192.0.0.255"]),
    ("192.0.2.0/24", &["192.0.2.0", "192.0.2.1", "192.0.2.255"]),
    (
        "192.88.99.0/24",
        &["192.88.99.0", "192.88.99.1", "192.88.99.255"],
    ),
    (
        "192.168.0.0/16",
        &["192.168.0.0", "192.168.1.1", "192.168.255.255"],
    ),
    (
        "198.18.0.0/15",
        &["198.18.0.0", "198.18.5.6", "198.19.255.255"],
    ),
    (
        "198.51.100.0/24",
        &["198.51.100.0", "198.51.100.7", "198.51.100.255"],
    ),
    (
        "203.0.113.0/24",
        &["203.0.113.0", "203.0.113.9", "203.0.113.255"],
    ),
    (
        "224.0.0.0/4",
        &["224.0.0.0", "224.0.0.1", "239.255.255.255"],
    ),
    (
        "240.0.0.0/4",
        &["240.0.0.0", "250.1.2.3", "255.255.255.255"],
    ),
    ("::/128", &["::"]),
    ("::1/128", &["::1"]),
    ("100::/64", &["100::", "100::1", "100::ffff:ffff:ffff:ffff"]),
    ("64:ff9b:1::/48", &["64:ff9b:1::", "64:ff9b:1::1"]),
    (
        "2001:db8::/32",
        &["2001:db8::", "2001:db8::1", "2001:db8:ffff::1"],
    ),
    ("fc00::/7", &["fc00::", "fd00:ec2::254", "fdff:ffff::1"]),
    ("fe80::/10", &["fe80::", "fe80::1", "febf::1"]),
    ("ff00::/8", &["ff00::", "ff02::1", "ff0e::1"]),
];

const PUBLIC: &[&str] = &[
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",
    "100.128.0.0",
    "172.32.0.0",
    "2606:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::",
];

/// The IPv6 spellings that embed an IPv4 address.
fn embedded(v4: Ipv4Addr) -> [IpAddr; 4] {
    let [a, b, c, d] = v4.octets();
    let tail = |p: [u16; 6]| {
        IpAddr::V6(Ipv6Addr::new(
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d]),
        ))
    };
    [
        IpAddr::V6(v4.to_ipv6_mapped()),
        tail([0, 0, 0, 0, 0, 0]),
        tail([0x64, 0xff9b, 0, 0, 0, 0]),
        IpAddr::V6(Ipv6Addr::new(
            0x2002,
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d]),
            0,
            0,
            0,
            0,
            0,
        )),
    ]
}

#[test]
fn the_matrix_covers_every_s9_range() {
    let s9 = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ];
    for range in s9 {
        assert!(MATRIX.iter().any(|(r, _)| *r == range), "{range}");
    }
    for (range, addrs) in MATRIX {
        let net: IpNet = range.parse().unwrap();
        for a in *addrs {
            assert!(
                net.contains(&a.parse::<IpAddr>().unwrap()),
                "{a} in {range}"
            );
        }
    }
}

#[test]
fn every_reserved_address_is_refused_by_default_in_every_spelling() {
    let policy = EgressPolicy::default();
    let mut refused = 0;
    for (range, addrs) in MATRIX {
        for a in *addrs {
            let ip: IpAddr = a.parse().unwrap();
            let mut forms = vec![ip];
            if let IpAddr::V4(v4) = ip {
                forms.extend(embedded(v4));
            }
            for f in forms {
                let err = policy.check(SocketAddr::new(f, 443)).unwrap_err();
                assert!(err.is_denied(), "{f} ({range})");
                assert_eq!(err.reason(), "private_address");
                refused += 1;
            }
        }
    }
    assert!(refused > 150, "{refused}");
    for p in PUBLIC {
        assert!(policy.check(sa(p)).is_ok(), "{p} must be allowed");
    }
}

#[test]
fn an_allowed_cidr_opens_exactly_its_own_range() {
    for (allowed, _) in MATRIX {
        let net: IpNet = allowed.parse().unwrap();
        let policy = EgressPolicy::public_only(vec![net]);
        for (range, addrs) in MATRIX {
            for a in *addrs {
                let ip: IpAddr = a.parse().unwrap();
                assert_eq!(
                    policy.check(SocketAddr::new(ip, 443)).is_ok(),
                    net.contains(&ip),
                    "{a} ({range}) with {allowed} allowed"
                );
            }
        }
        for p in PUBLIC {
            assert!(policy.check(sa(p)).is_ok(), "{p}");
        }
    }
    // An allowed IPv4 range also admits its IPv6 spellings, and nothing next to it.
    let policy = EgressPolicy::public_only(vec!["127.0.0.0/8".parse().unwrap()]);
    for f in embedded(Ipv4Addr::new(127, 0, 0, 1)) {
        assert!(policy.check(SocketAddr::new(f, 443)).is_ok(), "{f}");
    }
    for f in embedded(Ipv4Addr::new(169, 254, 169, 254)) {
        assert!(policy.check(SocketAddr::new(f, 443)).is_err(), "{f}");
    }
    assert!(
        policy.check(sa("::1")).is_err(),
        "::1 is not in 127.0.0.0/8"
    );
}

fn host(name: &str) -> Host {
    Host::Domain(name.into())
}

#[tokio::test]
async fn names_are_classified_by_the_addresses_they_resolve_to() {
    let mut resolver = StaticResolver::new();
    let mut names = Vec::new();
    for (i, (range, addrs)) in MATRIX.iter().enumerate() {
        let name = format!("r{i}.egress.test");
        resolver = resolver.with(&name, addrs.iter().map(|a| a.parse().unwrap()));
        names.push((name, *range));
    }
    let resolver = Resolver::new(
        resolver
            .with("Public.Egress.Test.", ["8.8.8.8".parse().unwrap()])
            .with(
                "mixed.egress.test",
                ["10.0.0.1".parse().unwrap(), "8.8.4.4".parse().unwrap()],
            ),
    );
    let dialer = Dialer::new(EgressPolicy::default(), Duration::from_secs(1))
        .with_resolver(resolver.clone());
    for (name, range) in &names {
        let err = dialer.resolve(&host(name), 443).await.unwrap_err();
        assert!(err.is_denied(), "{name} -> {range}: {err}");
    }
    let public = dialer.resolve(&host("public.egress.test"), 443).await;
    assert_eq!(public.unwrap()[0].addr(), sa("8.8.8.8"));
    // Only the allowed answers of a mixed answer are kept.
    let mixed = dialer
        .resolve(&host("mixed.egress.test"), 443)
        .await
        .unwrap();
    assert_eq!(
        mixed.iter().map(|a| a.addr()).collect::<Vec<_>>(),
        vec![sa("8.8.4.4")]
    );

    // Allowing one range lets exactly the name pointing into it through.
    for (allowed, _) in MATRIX {
        let policy = EgressPolicy::public_only(vec![allowed.parse().unwrap()]);
        let dialer = Dialer::new(policy, Duration::from_secs(1)).with_resolver(resolver.clone());
        for (name, range) in &names {
            let ok = dialer.resolve(&host(name), 443).await.is_ok();
            assert_eq!(ok, range == allowed, "{name} -> {range} with {allowed}");
        }
    }
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_never_dialled_unless_allowed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resolver = Resolver::new(
        StaticResolver::new().with("loop.egress.test", ["127.0.0.1".parse().unwrap()]),
    );
    let denied = Dialer::new(EgressPolicy::default(), Duration::from_secs(1))
        .with_resolver(resolver.clone());
    let err = denied
        .dial(&host("loop.egress.test"), port)
        .await
        .unwrap_err();
    assert!(err.is_denied(), "{err}");
    let err = denied
        .dial(&Host::Ip("::ffff:127.0.0.1".parse().unwrap()), port)
        .await
        .unwrap_err();
    assert!(err.is_denied(), "{err}");
    let nothing = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
    assert!(nothing.is_err(), "a refused dial must not connect");

    let allowed = Dialer::new(
        EgressPolicy::public_only(vec!["127.0.0.0/8".parse().unwrap()]),
        Duration::from_secs(1),
    )
    .with_resolver(resolver);
    let _stream = allowed.dial(&host("loop.egress.test"), port).await.unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
    assert!(matches!(accepted, Ok(Ok(_))));
}
