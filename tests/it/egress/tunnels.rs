//! Tunnels to every reserved range: refused by default, and exactly the allowed range opened by
//! `--allow-private-cidrs`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_to_every_reserved_range_are_refused_by_default() {
    let dests = matrix();
    let hosts: Vec<(String, IpAddr)> = dests
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("t{i}.egress.test"), d.ip))
        .collect();
    let proxy = resolving(&hosts, |o| o).await;
    let mut refused = 0u64;
    for (d, (name, _)) in dests.iter().zip(&hosts) {
        for target in [format!("{}:443", literal(d.ip)), format!("{name}:443")] {
            let (head, mut stream) = raw::send_head(
                proxy.addr,
                raw::connect_head(&target, &proxy.token).as_bytes(),
            )
            .await;
            assert_eq!(raw::status(&head), 403, "{target} ({}): {head}", d.range);
            assert!(raw::closes(&mut stream).await, "{target}");
            refused += 1;
        }
    }
    assert_eq!(refused, 2 * dests.len() as u64);
    let counted = proxy.rejections("private_address");
    assert_eq!(counted, refused, "every refusal counted as private_address");
    assert_eq!(proxy.mints(), 0);
    println!(
        "FIGURE F-20 tunnels, default policy: {refused}/{refused} CONNECTs refused ({} addresses in {} ranges, literal and by name)",
        dests.len(),
        RANGES.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_cidr_opens_tunnels_to_exactly_its_range() {
    let port4 = echo_server().await;
    let port6 = echo_server_on("[::1]:0").await;
    let dests = matrix();
    let mut hosts: Vec<(String, IpAddr)> = dests
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("t{i}.egress.test"), d.ip))
        .collect();
    hosts.push(("loop6.egress.test".into(), "::1".parse().unwrap()));
    let proxy = resolving(&hosts, |o| o.tunnels_to(port4).port(port6)).await;
    let status = |target: String| {
        let token = proxy.token.clone();
        let addr = proxy.addr;
        async move {
            let (head, stream) =
                raw::send_head(addr, raw::connect_head(&target, &token).as_bytes()).await;
            (raw::status(&head), stream)
        }
    };
    let (mut passed, mut refused) = (0, 0);
    for (d, (name, _)) in dests.iter().zip(&hosts) {
        let allowed = d.range == "127.0.0.0/8";
        if allowed && !d.local {
            // Passes the policy but would be dialled off this machine (NAT64, 6to4): the unit
            // tests cover it without dialling.
            continue;
        }
        for target in [
            format!("{}:{port4}", literal(d.ip)),
            format!("{name}:{port4}"),
        ] {
            let (code, mut stream) = status(target.clone()).await;
            if !allowed {
                assert_eq!(code, 403, "{target} ({})", d.range);
                refused += 1;
            } else if d.ip == IpAddr::from([127, 0, 0, 1]) || d.ip.to_string() == "::ffff:127.0.0.1"
            {
                assert_eq!(code, 200, "{target}");
                stream.write_all(b"ping").await.unwrap();
                let mut back = [0u8; 4];
                tokio::time::timeout(WAIT, stream.read_exact(&mut back))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(&back, b"ping", "{target}");
                passed += 1;
            } else {
                // Allowed, dialled, nothing listens there.
                assert_eq!(code, 502, "{target}");
                passed += 1;
            }
        }
    }
    // ::1 is loopback too, but not inside 127.0.0.0/8.
    for target in [
        format!("[::1]:{port6}"),
        format!("loop6.egress.test:{port6}"),
    ] {
        assert_eq!(status(target.clone()).await.0, 403, "{target}");
        refused += 1;
    }
    let outside = dests.iter().filter(|d| d.range != "127.0.0.0/8").count();
    assert_eq!(
        refused,
        2 * outside + 2,
        "every address outside 127.0.0.0/8"
    );
    assert_eq!(
        passed, 8,
        "4 loopback addresses dialled, literal and by name"
    );
}
