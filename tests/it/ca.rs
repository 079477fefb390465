//! Certificates: single-flight minting, the leaf's shape, and CA keys in every format operators
//! bring (RSA PKCS#1/PKCS#8, EC SEC1/PKCS#8).

use crate::support::*;
use std::process::Command;
use x509_parser::prelude::*;

/// OpenAI intercepted under three names (one an IP), with `change` applied.
async fn intercepting_proxy(change: impl FnOnce(Setup) -> Setup) -> Env {
    Env::with(|o| {
        change(o.http1_upstream().provider(|u| ProviderSpec {
            intercept_hosts: vec![
                "api.openai.com".into(),
                "new.example.com".into(),
                "127.0.0.1".into(),
            ],
            ..ProviderSpec::openai(u.base_url())
        }))
    })
    .await
}

#[tokio::test]
async fn fifty_concurrent_connects_to_a_new_host_mint_one_leaf() {
    let proxy = intercepting_proxy(|o| o).await;
    assert_eq!(proxy.mints(), 0);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, token, ca) = (proxy.addr, proxy.token.clone(), proxy.ca_pem.clone());
        tasks.push(tokio::spawn(async move {
            raw::connect_tls(addr, "new.example.com:443", &token, "new.example.com", &ca)
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("handshake succeeds");
    }
    assert_eq!(
        proxy.mints(),
        1,
        "exactly one mint for fifty concurrent first CONNECTs"
    );
    let hits = proxy
        .app
        .leaves
        .stats()
        .hits
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(hits, 49);
}

#[tokio::test]
async fn leaves_have_one_san_server_auth_and_a_short_life() {
    let proxy = intercepting_proxy(|o| o).await;
    for (target, sni, expect_ip) in [
        ("api.openai.com:443", "api.openai.com", false),
        ("127.0.0.1:443", "127.0.0.1", true),
    ] {
        let tls = proxy.tls_to(target, sni).await.unwrap();
        let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
        assert!(chain.len() >= 2, "leaf followed by the CA");
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1, "exactly one SAN");
        match &san.value.general_names[0] {
            GeneralName::DNSName(n) => assert!(!expect_ip && *n == sni),
            GeneralName::IPAddress(ip) => assert!(expect_ip && *ip == [127, 0, 0, 1]),
            other => panic!("unexpected SAN {other:?}"),
        }
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && !eku.value.client_auth);
        let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert!(life <= 7 * 86400 + 3600 + 5, "validity {life}s");
        assert_eq!(leaf.subject().to_string(), format!("CN={sni}"));
    }
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CA files in the formats OpenSSL writes: (label, cert PEM, key PEM).
fn openssl_cas() -> Vec<(&'static str, String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ext = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ];
    let req = |key: &str, cert: &str| {
        let mut args = vec![
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-out",
            cert,
            "-days",
            "30",
            "-subj",
            "/CN=operator CA",
        ];
        args.extend(ext);
        openssl(&args, d);
    };
    openssl(&["genrsa", "-traditional", "-out", "rsa1.pem", "2048"], d);
    req("rsa1.pem", "rsa.crt");
    openssl(
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "rsa1.pem", "-out", "rsa8.pem",
        ],
        d,
    );
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec1.pem",
        ],
        d,
    );
    req("ec1.pem", "ec.crt");
    openssl(
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec1.pem", "-out", "ec8.pem",
        ],
        d,
    );
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert!(read("rsa1.pem").contains("BEGIN RSA PRIVATE KEY"));
    assert!(read("ec1.pem").contains("BEGIN EC PRIVATE KEY"));
    vec![
        ("rsa-pkcs1", read("rsa.crt"), read("rsa1.pem")),
        ("rsa-pkcs8", read("rsa.crt"), read("rsa8.pem")),
        ("ec-sec1", read("ec.crt"), read("ec1.pem")),
        ("ec-pkcs8", read("ec.crt"), read("ec8.pem")),
    ]
}

#[tokio::test]
async fn operator_cas_in_every_key_format_sign_leaves_clients_accept() {
    for (label, cert, key) in openssl_cas() {
        let ca_cert = cert.clone();
        let proxy = intercepting_proxy(|o| o.ca_files(ca_cert, key)).await;
        assert_eq!(
            proxy.ca_pem, cert,
            "{label}: the operator's CA is used, not a generated one"
        );
        let client = agent_client(proxy.addr, &proxy.token, &[&cert], Http::One);
        let resp = client.get(CHAT).call().await;
        assert_eq!(resp.status(), 200, "{label}");
    }
}

#[test]
fn mismatched_cert_and_key_are_refused() {
    let cas = openssl_cas();
    let dir = tempfile::tempdir().unwrap();
    let paths = aibridge_proxy::ca::CaPaths {
        cert: dir.path().join("ca.pem"),
        key: dir.path().join("ca-key.pem"),
    };
    std::fs::write(&paths.cert, &cas[0].1).unwrap(); // RSA cert
    crate::support::proxy::write_private_key(&paths.key, cas[2].2.as_bytes()); // EC key
    let err = aibridge_proxy::ca::CertificateAuthority::load(&paths)
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not belong together"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "no key material in errors");
}

#[tokio::test]
async fn a_combined_cert_and_key_file_never_serves_the_key() {
    let cas = openssl_cas();
    let (_, cert, key) = &cas[2];
    let combined = format!("{key}{cert}");
    let key = key.clone();
    let proxy = intercepting_proxy(|o| o.ca_files(combined, key)).await;
    let (status, _) = proxy.admin_get("/healthz").await;
    assert_eq!(status, 200);
    let served = plain_client()
        .get(proxy.admin_url("/ca.pem"))
        .call()
        .await
        .text()
        .await
        .unwrap();
    assert!(served.contains("BEGIN CERTIFICATE"));
    assert!(!served.contains("PRIVATE KEY"), "{served}");
    // The re-encoded certificate is the operator's: clients trusting it accept the leaves.
    let client = agent_client(proxy.addr, &proxy.token, &[&served], Http::One);
    let resp = client.get(CHAT).call().await;
    assert_eq!(resp.status(), 200);
}
