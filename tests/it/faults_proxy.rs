//! Faults on the proxy's own side of a request (RELIABILITY §10): an upstream that stalls
//! (F4), a client that leaves mid-stream (F9), a CA that expires while running (F21) and a
//! panic inside one connection task (F24).

use crate::support::scripted::ScriptedUpstream;
use crate::support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use x509_parser::prelude::{FromDer, X509Certificate};

const LIMIT: Duration = Duration::from_millis(400);

/// `--upstream-response-timeout` and `--idle-timeout` at [`LIMIT`].
fn short_timeouts(o: Setup) -> Setup {
    o.tweak(|c| {
        c.proxy.upstream_response_timeout = LIMIT;
        c.proxy.idle_timeout = LIMIT;
    })
}

/// F4: an upstream that takes the request and never answers gets `504` at
/// `--upstream-response-timeout`, and the upstream request is cancelled with it.
#[tokio::test]
async fn an_upstream_silent_before_its_head_gets_504_and_is_cancelled() {
    let setup = Env::setup();
    let cancelled = Arc::new(AtomicBool::new(false));
    let seen_cancel = cancelled.clone();
    let upstream =
        ScriptedUpstream::start(setup.ca().server_config(&[b"http/1.1"]), move |_, _req| {
            let cancelled = seen_cancel.clone();
            async move {
                // Dropped when the proxy gives up on the request: that is the cancellation.
                struct OnDrop(Arc<AtomicBool>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _guard = OnDrop(cancelled);
                std::future::pending::<()>().await;
                unreachable!()
            }
        })
        .await;
    let proxy = short_timeouts(setup.openai_at(upstream.base_url()))
        .start()
        .await;
    let client = proxy.client(Http::One);
    let started = Instant::now();
    let resp = client.get(MODELS).call().await;
    let waited = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        waited >= LIMIT,
        "answered after {waited:?}, before the limit"
    );
    let id = request_id(&resp);
    assert_eq!(
        resp.text().await.unwrap(),
        "the provider's upstream did not answer in time\n"
    );
    let r = proxy.row(&id).await;
    assert_eq!(
        (r.status, r.error.as_deref()),
        (504, Some("upstream_timeout"))
    );
    let deadline = Instant::now() + WAIT;
    while !cancelled.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream request was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors = proxy
        .metric(
            "aibridge_proxy_upstream_errors_total",
            &[("provider", "openai"), ("reason", "upstream_timeout")],
        )
        .await;
    assert_eq!(errors, 1.0);
}

/// F4: a stream whose upstream goes quiet between events is aborted at `--idle-timeout` (per
/// read, not in total: a stream that keeps talking runs past the limit). The client sees a
/// truncated body, the record keeps the events' outcome as truncated.
#[tokio::test]
async fn a_stream_silent_between_events_is_aborted_at_the_idle_timeout() {
    let proxy = Env::with(|o| short_timeouts(o.http1_upstream().openai())).await;
    for http in [Http::One, Http::Two] {
        let client = proxy.client(http);
        // Ten events 100 ms apart: 1 s in total, more than twice the limit, never idle.
        let talking = paced_chat(&client, 10, 100).call().await;
        let id = request_id(&talking);
        let body = talking.text().await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{http:?}: {body}");
        assert_eq!(proxy.row(&id).await.outcome, "completed");

        // Events 3 s apart: the first arrives, then the stream is cut at the limit.
        let mut quiet = paced_chat(&client, 3, 3000).call().await;
        let id = request_id(&quiet);
        let first = quiet.chunk().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: "), "{http:?}");
        let started = Instant::now();
        let end = quiet.chunk().await;
        let waited = started.elapsed();
        assert!(
            end.is_err(),
            "{http:?}: the stream must end in error, not cleanly"
        );
        assert!(
            waited >= LIMIT / 2 && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        let r = proxy.row(&id).await;
        assert_eq!(
            (r.outcome.as_str(), r.error.as_deref()),
            ("truncated", Some("upstream_idle_timeout")),
            "{http:?}"
        );
    }
}

/// F9: a client that leaves mid-stream cancels the upstream request promptly, its record says
/// `client_cancelled`, and the in-flight gauge and the task count return to where they were.
#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_upstream_and_leaves_nothing_behind() {
    let proxy = Env::openai().await;
    let baseline_tasks = proxy.app.shutdown.task_count();
    let inflight = || [("provider", "openai")];
    for http in [Http::One, Http::Two] {
        let client = proxy.client(http);
        let mut resp = paced_chat(&client, 1000, 20).call().await;
        let id = request_id(&resp);
        resp.chunk().await.unwrap().unwrap();
        assert_eq!(
            proxy
                .metric("aibridge_proxy_inflight_requests", &inflight())
                .await,
            1.0
        );
        drop(resp);
        drop(client);
        let r = proxy.row(&id).await;
        assert_eq!(
            (r.outcome.as_str(), r.error.as_deref()),
            ("client_cancelled", Some("client_cancelled")),
            "{http:?}"
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let gauge = proxy
                .metric("aibridge_proxy_inflight_requests", &inflight())
                .await;
            let tasks = proxy.app.shutdown.task_count();
            if gauge == 0.0 && tasks <= baseline_tasks {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{http:?}: inflight {gauge}, tasks {tasks} (baseline {baseline_tasks})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// F24: a panic inside one connection task kills that connection alone; it is counted in
/// `task_panics_total` and the proxy keeps serving, on new connections and on others open.
#[tokio::test]
async fn a_panicking_connection_task_dies_alone_and_is_counted() {
    let proxy = Env::with(|o| o.http1_upstream().openai().panic_on_path("/v1/panic")).await;
    let bystander = proxy.client(Http::One);
    let ok = bystander.get(MODELS).call().await;
    assert_eq!(ok.status(), 404);

    let victim = proxy.client(Http::One);
    let died = victim.get("https://api.openai.com/v1/panic").send().await;
    assert!(
        died.is_err(),
        "the panicking request got an answer: {died:?}"
    );

    assert_eq!(
        proxy.metric("aibridge_proxy_task_panics_total", &[]).await,
        1.0
    );
    for client in [&bystander, &victim] {
        let resp = client.get(MODELS).call().await;
        assert_eq!(resp.status(), 404, "the proxy keeps serving");
    }
}

/// F21: a CA that expires while the proxy runs: leaves minted before are cut at the CA's
/// expiry, after it no leaf is minted (the handshake fails, counted in
/// `tls_handshake_failures_total{reason="no_leaf"}`), nothing panics and the rest keeps serving.
#[tokio::test]
async fn a_ca_expiring_while_running_stops_interception_cleanly() {
    let life = Duration::from_secs(3);
    let (cert, key) = short_lived_ca(life);
    let started = Instant::now();
    let proxy = Env::with(|o| o.http1_upstream().openai().ca_files(cert, key)).await;
    let resp = proxy.client(Http::One).get(MODELS).call().await;
    assert_eq!(resp.status(), 404);
    // The leaf served is cut at the CA's expiry, not seven days out.
    let tls = proxy.intercepted().await;
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let not_after = |der: &[u8]| {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        cert.validity().not_after.timestamp()
    };
    assert_eq!(not_after(&chain[0]), not_after(&chain[1]));
    drop(tls);

    tokio::time::sleep((life + Duration::from_millis(300)).saturating_sub(started.elapsed())).await;
    let fresh = proxy.client(Http::One);
    let after = fresh.get(MODELS).send().await;
    assert!(after.is_err(), "a handshake succeeded after the CA expired");
    assert_eq!(
        proxy
            .metric(
                "aibridge_proxy_tls_handshake_failures_total",
                &[("reason", "no_leaf")]
            )
            .await,
        1.0
    );
    let (status, _) = proxy.admin_get("/healthz").await;
    assert_eq!(status, 200);
}

/// A CA (cert PEM, key PEM) valid from an hour ago until `life` from now.
fn short_lived_ca(life: Duration) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "short-lived test CA");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + life;
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}
