//! The egress policy end to end (RELIABILITY F-20, S9, S10, E5, E6): CONNECT tunnels and
//! provider base URLs to every reserved range, as literals and as names the proxy resolves there
//! (through its resolver map, the same lookup path as the system resolver's), with and without
//! `--allow-private-cidrs` / `--allow-private-upstreams`; write-time refusal through the admin
//! API, the CLI and `apply`; rows written before the policy; upstream redirects relayed, never
//! followed. Every connection that passes the policy goes to loopback; every other one is refused
//! before a packet leaves.
//!
//! `tunnels`: CONNECT to the matrix; `upstreams`: provider base URLs resolving into it, and
//! redirects; `writes`: refusals when a base URL is written, and rows written before the policy.

mod tunnels;
mod upstreams;
mod writes;

use crate::support::bin::{create_provider, run, stderr, stdout};
use crate::support::db::new_provider;
use crate::support::net::echo_server_on;
use crate::support::proxy::upstream_policy;
use crate::support::upstream::CHAT_JSON;
use crate::support::*;
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{NewProvider, Store};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every reserved range with addresses at its start, inside and at its end: the S9 list, then
/// the documentation, relay and discard ranges the policy also refuses.
const RANGES: &[(&str, &[&str])] = &[
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
    (
        "192.168.0.0/16",
        &["192.168.0.0", "192.168.1.1", "192.168.255.255"],
    ),
    (
        "198.18.0.0/15",
        &["198.18.0.0", "198.18.5.6", "198.19.255.255"],
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
    ("fc00::/7", &["fc00::", "fd00:ec2::254", "fdff:ffff::1"]),
    ("fe80::/10", &["fe80::", "fe80::1", "febf::1"]),
    ("ff00::/8", &["ff00::", "ff02::1", "ff0e::1"]),
    ("192.0.2.0/24", &["192.0.2.0", "192.0.2.1", "192.0.2.255"]),
    ("192.88.99.0/24", &["192.88.99.1"]),
    ("198.51.100.0/24", &["198.51.100.7"]),
    ("203.0.113.0/24", &["203.0.113.9"]),
    ("100::/64", &["100::1"]),
    ("64:ff9b:1::/48", &["64:ff9b:1::1"]),
    ("2001:db8::/32", &["2001:db8::1"]),
];

/// The IPv6 spellings of an IPv4 address: mapped, compatible, NAT64, 6to4.
fn embedded(v4: Ipv4Addr) -> [IpAddr; 4] {
    let [a, b, c, d] = v4.octets();
    let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
    [
        IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo)),
        IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
        IpAddr::V6(Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 0)),
    ]
}

/// One destination of the matrix.
#[derive(Clone, Copy)]
struct Dest {
    /// The range the address belongs to (for an embedded form: the IPv4 range it embeds).
    range: &'static str,
    ip: IpAddr,
    /// Dialling it stays on this machine (an IPv4 loopback address, as itself or IPv4-mapped):
    /// only these are ever dialled when their range is allowed.
    local: bool,
}

/// Every address of [`RANGES`], plus the four IPv6 spellings of one address per IPv4 range.
fn matrix() -> Vec<Dest> {
    let mut out = Vec::new();
    for (range, addrs) in RANGES {
        for (i, a) in addrs.iter().enumerate() {
            let ip: IpAddr = a.parse().unwrap();
            let loopback4 = matches!(ip, IpAddr::V4(v4) if v4.is_loopback());
            out.push(Dest {
                range,
                ip,
                local: loopback4,
            });
            if let (IpAddr::V4(v4), 1) = (ip, i) {
                for (k, form) in embedded(v4).into_iter().enumerate() {
                    out.push(Dest {
                        range,
                        ip: form,
                        local: loopback4 && k == 0,
                    });
                }
            }
        }
    }
    out
}

fn literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The proxy with every `(name, ip)` of `hosts` in its resolver map, and `change` applied.
async fn resolving(hosts: &[(String, IpAddr)], change: impl FnOnce(Setup) -> Setup) -> Env {
    let hosts = hosts.to_vec();
    Env::with(|o| {
        let o = hosts
            .into_iter()
            .fold(o, |o, (name, ip)| o.resolve(name, ip));
        change(o)
    })
    .await
}

/// A plain-HTTP provider upstream on 127.0.0.1 that records every request: JSON on most paths,
/// `302` to the metadata service on `/redirect-metadata` and to itself on `/redirect-self`.
struct PlainUpstream {
    addr: SocketAddr,
    /// (path, Authorization) of every request seen.
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

const METADATA_LOCATION: &str = "http://169.254.169.254/latest/meta-data/";

impl PlainUpstream {
    async fn start() -> PlainUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        log.lock().unwrap().push((path.clone(), auth));
                        let resp = match path.as_str() {
                            "/redirect-metadata" => http::Response::builder()
                                .status(302)
                                .header("location", METADATA_LOCATION)
                                .body(Full::new(Bytes::new())),
                            "/redirect-self" => http::Response::builder()
                                .status(302)
                                .header("location", format!("http://{addr}/v1/chat/completions"))
                                .body(Full::new(Bytes::new())),
                            _ => http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(CHAT_JSON.as_bytes()))),
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        PlainUpstream { addr, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

const KEY: &str = "sk-egress-provider-key-0123456789";

/// Provider `name` intercepting `host`, sent to `base_url` with [`KEY`].
fn provider(name: &str, base_url: &str, host: &str) -> NewProvider {
    NewProvider {
        api_keys: vec![Secret::new(KEY.to_string())],
        ..new_provider(name, base_url, host)
    }
}
