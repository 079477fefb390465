//! Provider base URLs resolving into every reserved range: refused at dial time unless
//! `--allow-private-upstreams` allows exactly their range; upstream redirects relayed, never
//! followed.

use super::*;

/// Providers whose base URLs name hosts the proxy resolves to every address of the matrix;
/// one request each. Returns the proxy, the upstream and, per provider, the destination, the
/// request id, the status and the body the client got.
async fn base_url_matrix(
    allow_private_upstreams: &[&'static str],
) -> (Env, PlainUpstream, Vec<(Dest, String, u16, String)>) {
    let upstream = PlainUpstream::start().await;
    let allowed_loopback = !allow_private_upstreams.is_empty();
    let dests: Vec<Dest> = matrix()
        .into_iter()
        // With loopback allowed, only destinations that stay on this machine are dialled.
        .filter(|d| !(allowed_loopback && d.range == "127.0.0.0/8" && !d.local))
        .collect();
    let hosts: Vec<(String, IpAddr)> = dests
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("u{i}.egress.test"), d.ip))
        .collect();
    let proxy = resolving(&hosts, |o| {
        o.allow_private_upstreams(allow_private_upstreams)
    })
    .await;
    // Names are not resolved when a provider is written: these rows are accepted.
    for (i, (name, _)) in hosts.iter().enumerate() {
        proxy
            .app
            .store
            .create_provider(provider(
                &format!("p{i}"),
                &format!("http://{name}:{}", upstream.addr.port()),
                &format!("p{i}.example"),
            ))
            .await
            .unwrap();
    }
    let router = proxy.app.router.clone();
    let n = dests.len();
    eventually("every provider routed", move || {
        router.snapshot().host_map().len() == n
    })
    .await;
    let client = proxy.client(Http::One);
    let mut out = Vec::new();
    for (i, d) in dests.iter().enumerate() {
        let resp = client
            .post(format!("https://p{i}.example/v1/chat/completions"))
            .body(r#"{"model":"gpt-4o"}"#)
            .call()
            .await;
        let status = resp.status().as_u16();
        let id = request_id(&resp);
        assert!(!id.is_empty(), "{}: X-Request-Id", d.ip);
        let body = resp.text().await.unwrap();
        out.push((*d, id, status, body));
    }
    (proxy, upstream, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_urls_resolving_into_any_reserved_range_get_502_upstream_address_denied() {
    let (proxy, upstream, results) = base_url_matrix(&[]).await;
    for (d, _, status, body) in &results {
        assert_eq!(*status, 502, "{} ({})", d.ip, d.range);
        assert_eq!(body, "the provider's upstream could not be reached\n");
    }
    assert!(upstream.seen().is_empty(), "nothing reached the upstream");
    let ids: Vec<String> = results.iter().map(|r| r.1.clone()).collect();
    for r in proxy.rows_of(&ids).await {
        assert_eq!(r.status, 502);
        assert_eq!(r.error.as_deref(), Some("upstream_address_denied"), "{r:?}");
    }
    for i in 0..results.len() {
        let counted = proxy
            .app
            .metrics
            .upstream_errors_total
            .with_label_values(&[&format!("p{i}"), "upstream_address_denied"])
            .get();
        assert_eq!(counted, 1, "p{i}");
    }
    println!(
        "FIGURE F-20 provider upstreams, default policy: {n}/{n} base URLs refused at dial time (502 upstream_address_denied), 0 requests upstream",
        n = results.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_upstream_cidr_opens_exactly_its_range() {
    let (proxy, upstream, results) = base_url_matrix(&["127.0.0.0/8"]).await;
    let mut reached = 0;
    let mut denied = Vec::new();
    for (d, id, status, body) in &results {
        if d.range != "127.0.0.0/8" {
            assert_eq!(*status, 502, "{} ({})", d.ip, d.range);
            denied.push(id.clone());
        } else if d.ip.to_string() == "127.0.0.1" || d.ip.to_string() == "::ffff:127.0.0.1" {
            assert_eq!(*status, 200, "{}", d.ip);
            assert_eq!(body, CHAT_JSON);
            reached += 1;
        } else {
            // 127.0.0.0 and 127.255.255.255: allowed, dialled, nothing answers.
            assert_eq!(*status, 502, "{}", d.ip);
        }
    }
    assert_eq!(reached, 2, "127.0.0.1 and its IPv4-mapped form");
    let seen = upstream.seen();
    assert_eq!(seen.len(), reached, "{seen:?}");
    assert!(seen
        .iter()
        .all(|(_, auth)| auth == &format!("Bearer {KEY}")));
    for r in proxy.rows_of(&denied).await {
        assert_eq!(r.error.as_deref(), Some("upstream_address_denied"), "{r:?}");
    }
}

#[tokio::test]
async fn upstream_redirects_are_relayed_as_they_came_and_never_followed() {
    let upstream = PlainUpstream::start().await;
    let proxy =
        Env::with(|o| o.openai_at(format!("http://127.0.0.1:{}", upstream.addr.port()))).await;
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::all(format!("http://{}", proxy.addr))
                .unwrap()
                .basic_auth("agent", &proxy.token),
        )
        .use_preconfigured_tls(tls::client_config(&[&proxy.ca_pem], &[b"http/1.1"]))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    let self_location = format!("http://{}/v1/chat/completions", upstream.addr);
    for (path, location) in [
        ("/redirect-metadata", METADATA_LOCATION.to_string()),
        ("/redirect-self", self_location),
    ] {
        let resp = client
            .get(format!("https://api.openai.com{path}"))
            .call()
            .await;
        assert_eq!(resp.status(), 302, "{path}");
        assert_eq!(
            resp.headers().get("location").unwrap().to_str().unwrap(),
            location
        );
        assert!(resp.headers().contains_key("x-request-id"));
    }
    // Give a follow-up request every chance to show up before counting.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let paths: Vec<String> = upstream.seen().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, vec!["/redirect-metadata", "/redirect-self"]);
}
