//! Agent authentication on CONNECT: 407 with the Basic challenge, connection closed.

use crate::support::*;
use base64::Engine;

async fn connect_with(proxy: &TestProxy, auth_lines: &str) -> (String, tokio::net::TcpStream) {
    let req = format!(
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{auth_lines}\r\n"
    );
    raw::send_head(proxy.addr, req.as_bytes()).await
}

async fn assert_407(proxy: &TestProxy, auth_lines: &str) {
    let (head, mut stream) = connect_with(proxy, auth_lines).await;
    assert_eq!(raw::status(&head), 407, "{auth_lines:?}: {head}");
    assert!(
        head.contains("proxy-authenticate: Basic realm=\"aibridge-proxy\""),
        "{head}"
    );
    assert!(
        raw::closes(&mut stream).await,
        "connection closes after a 407"
    );
}

#[tokio::test]
async fn missing_garbled_wrong_and_ambiguous_credentials_get_407() {
    let proxy = Env::bare().await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let good = raw::basic(&proxy.token);
    let cases = [
        String::new(),
        "Proxy-Authorization: Basic !!!notbase64\r\n".to_string(),
        format!("Proxy-Authorization: Bearer {}\r\n", proxy.token),
        format!("Proxy-Authorization: Basic {}\r\n", b64("agent:abp_wrong")),
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            b64(&format!("{}:", proxy.token))
        ),
        format!("Proxy-Authorization: Basic {}\r\n", b64(&proxy.token)),
        format!("Proxy-Authorization: {good}\r\nProxy-Authorization: {good}\r\n"),
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            b64(&format!("agent:{}", "x".repeat(8192)))
        ),
    ];
    for case in &cases {
        assert_407(&proxy, case).await;
    }
    // The 407 body is the fixed sentence.
    let req = "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let (head, mut stream) = raw::send_head(proxy.addr, req.as_bytes()).await;
    assert_eq!(raw::status(&head), 407);
    let mut body = Vec::new();
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(WAIT, stream.read_to_end(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"Proxy Authentication Required\n");
}

#[tokio::test]
async fn a_correct_token_is_accepted_with_any_scheme_case() {
    let proxy = Env::with(|o| o.http1_upstream().openai()).await;
    let encoded = raw::basic(&proxy.token)
        .trim_start_matches("Basic ")
        .to_string();
    for scheme in ["Basic", "basic", "BASIC"] {
        let (head, _) = connect_with(
            &proxy,
            &format!("Proxy-Authorization: {scheme} {encoded}\r\n"),
        )
        .await;
        assert_eq!(raw::status(&head), 200, "{scheme}: {head}");
    }
}

#[tokio::test]
async fn a_revoked_token_gets_407_after_the_reload() {
    let proxy = Env::with(Setup::deny_non_providers).await;
    let auth = format!("Proxy-Authorization: {}\r\n", raw::basic(&proxy.token));
    // Before: the token passes (403: no provider for the host, and deny mode).
    let (head, _) = connect_with(&proxy, &auth).await;
    assert_eq!(raw::status(&head), 403, "{head}");

    let generation = proxy.generation();
    assert!(proxy.app.store.revoke_token(proxy.token_id).await.unwrap());
    proxy.wait_for_generation(generation).await;
    assert_407(&proxy, &auth).await;
}

/// Figure F-8 (dudect style): does validation time depend on how close a presented token is to
/// the real one? The presented tokens are the same in both classes; what differs is the secret:
/// one snapshot holds a token sharing all but the last character with each presented token,
/// the other a token sharing none. 200 000 validations, one of each per round in random order;
/// Welch's t on the two duration samples must stay under 4.5, dudect's threshold.
#[tokio::test]
async fn token_validation_time_does_not_depend_on_a_shared_prefix() {
    use crate::support::proxy::snapshot_holding;
    use aibridge_proxy::auth::authenticate;
    use aibridge_proxy::config::AuthMode;
    let presented = "abp_k3j5h2g8f7d6s5a4q3w2e1r9t8y7u6i5o4p3l2";
    let n = presented.len();
    let near = snapshot_holding(&format!("{}Z", &presented[..n - 1]));
    let shifted: String = presented.bytes().map(|b| (b ^ 0x01) as char).collect();
    let far = snapshot_holding(&shifted);
    let headers: Vec<http::HeaderMap> = (0..16)
        .map(|i| {
            let mut h = http::HeaderMap::new();
            let t = format!("{}{}", &presented[..n - 1], (b'a' + i) as char);
            h.insert(
                http::header::PROXY_AUTHORIZATION,
                raw::basic(&t).parse().unwrap(),
            );
            h
        })
        .collect();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..100_000usize {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let h = &headers[i % headers.len()];
        let order = if state & 1 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_near in order {
            let (snapshot, out) = if is_near {
                (&near, &mut a)
            } else {
                (&far, &mut b)
            };
            let t = std::time::Instant::now();
            let r = authenticate(h, snapshot, AuthMode::Token);
            out.push(t.elapsed().as_nanos() as f64);
            assert!(r.is_err());
        }
    }
    // Drop the slowest 1 % of each class (scheduler noise), as dudect's percentile crop does.
    let crop = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v.truncate(v.len() * 99 / 100);
    };
    crop(&mut a);
    crop(&mut b);
    let stats = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        (m, var, v.len() as f64)
    };
    let ((ma, va, na), (mb, vb, nb)) = (stats(&a), stats(&b));
    let t = (ma - mb) / (va / na + vb / nb).sqrt();
    println!(
        "FIGURE F-8 timing: {} validations, mean {ma:.0} ns (secret shares 31 bytes) vs {mb:.0} ns (shares none), Welch t = {t:.2} (threshold 4.5)",
        a.len() + b.len()
    );
    assert!(
        t.abs() < 4.5,
        "validation time leaks a shared prefix: t = {t:.2}"
    );
}
