//! Hostile peers and clients against real nodes. Over HTTP: slow bodies, oversize bodies, wrong
//! methods, each answered with its documented status and its connection closed while honest
//! requests are served. Over gossip: transactions a node cannot admit (forged, malleated,
//! unfunded) are not relayed, while an admitted one reaches every node and applies.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use actors::protocol::{self, topics};
use chain::{Address, PrivateKeySigner, Sig};
use common::{OPG, Running, transfer};
use testnet::client::Client;

/// The other valid-looking encoding of a signature: `n - s` with the other parity (recovers
/// the same key in libraries that normalise).
fn malleate(sig: &Sig) -> Sig {
    use alloy::primitives::{Signature, U256};
    let s = Signature::from_raw_array(&sig.0).unwrap();
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .unwrap();
    Sig(Signature::new(s.r(), n - s.s(), !s.v()).as_bytes())
}

/// A job of the testnet's first model, signed by its funded client, as `POST /v1/jobs` takes it.
fn job_body(net: &testnet::Testnet) -> serde_json::Value {
    let model = &net.models[0];
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    testnet::client::signed_job(
        &net.client_key().unwrap(),
        &net.domain,
        model.id.parse().unwrap(),
        &input,
        model.price.parse().unwrap(),
        common::fresh_nonce(),
    )
    .unwrap()
}

/// Posts a fresh job (see [`job_body`]) to `node`.
fn submit_job(client: &Client, net: &testnet::Testnet, node: &str) -> testnet::client::Reply {
    client
        .post(&format!("{node}/v1/jobs"), &job_body(net))
        .unwrap()
}

/// Sum of a counter's series whose labels contain every one of `labels`.
fn counter(client: &Client, node: &str, name: &str, labels: &[&str]) -> f64 {
    client
        .get_text(&format!("{node}/metrics"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The node's default `[http] request_timeout_ms`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(http: &str) -> TcpStream {
    let addr = http.trim_start_matches("http://");
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(REQUEST_TIMEOUT * 3)).unwrap();
    s
}

/// Reads until the server closes the connection; returns what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server did not close the connection ({e}); it sent {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one request that closes the connection; returns the response head and body.
fn request(http: &str, head: &str, body: &[u8]) -> String {
    let mut s = connect(http);
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_to_close(&mut s)
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[test]
fn hostile_clients_and_peers_are_refused_before_they_cost_anything() {
    let run = Running::up(1, 1, Vec::new());
    let http = run.net().nodes[0].http.clone();
    let host = http.trim_start_matches("http://").to_string();

    // Wrong method: 405 with what the endpoint accepts; no such path: 404.
    let r = request(
        &http,
        &format!("GET /v1/txs HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        b"",
    );
    assert_eq!(status(&r), 405, "{r}");
    assert!(r.to_lowercase().contains("allow: post"), "{r}");
    let r = request(
        &http,
        &format!(
            "POST /v1/status HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(status(&r), 405, "{r}");
    assert!(r.to_lowercase().contains("allow: get, head"), "{r}");
    assert!(r.contains("method_not_allowed"), "{r}");
    let r = request(
        &http,
        &format!("HEAD /v1/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        b"",
    );
    assert_eq!(status(&r), 200, "{r}");
    let r = request(
        &http,
        &format!("GET /v1/nothing HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        b"",
    );
    assert_eq!(status(&r), 404, "{r}");

    // Oversize, declared: 413 at once, without waiting for (or reading) the body.
    let started = Instant::now();
    let mut s = connect(&http);
    s.write_all(
        format!(
            "POST /v1/txs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let r = read_to_close(&mut s);
    assert_eq!(status(&r), 413, "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Oversize, chunked (no length up front): 413 once the limit is passed.
    let mut s = connect(&http);
    s.write_all(
        format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if s.write_all(&framed).is_err() {
            break; // the server answered and closed: what we want
        }
    }
    let r = read_to_close(&mut s);
    assert_eq!(status(&r), 413, "{r}");
    // Malformed JSON within the limit: 400.
    let body = b"{\"type\": \"transfer\", \"from\": ";
    let r = request(
        &http,
        &format!(
            "POST /v1/txs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        body,
    );
    assert_eq!(status(&r), 400, "{r}");

    // Fifty clients trickling a body one byte a second: each gets 408 once the timeout has
    // passed and is disconnected, while an honest client is served all along.
    let started = Instant::now();
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let (http, host) = (http.clone(), host.clone());
            std::thread::spawn(move || {
                let mut s = connect(&http);
                s.write_all(
                    format!(
                        "POST /v1/txs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
                s.set_nonblocking(true).unwrap();
                let mut answer = Vec::new();
                let deadline = Instant::now() + REQUEST_TIMEOUT * 3;
                let mut buf = [0u8; 1024];
                let mut next_byte = Instant::now();
                loop {
                    assert!(Instant::now() < deadline, "never answered or closed");
                    if Instant::now() >= next_byte {
                        let _ = s.write_all(b" ");
                        next_byte += Duration::from_secs(1);
                    }
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(_) => break,
                    }
                }
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    let client = Client::new();
    while !slow.iter().all(|t| t.is_finished()) {
        let r = client.get(&format!("{http}/v1/status")).unwrap();
        assert_eq!(r.status, 200, "honest request refused during the attack");
        assert!(
            started.elapsed() < REQUEST_TIMEOUT * 3,
            "slow connections still open"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for t in slow {
        let r = t.join().unwrap();
        assert_eq!(status(&r), 408, "{r}");
    }
    let took = started.elapsed();
    assert!(
        took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_secs(8),
        "slow bodies were cut after {took:?}"
    );

    // The rest of the suite runs on the same testnet.
    copies_of_one_job_run_once(&run);
    gossiped_transactions_are_relayed_only_once_admitted(&run);
    replayed_settled_records_cost_no_verification(&run);
    direct_job_calls_are_admitted_as_a_gateway_would(&run);
    spoofed_capabilities_route_no_job(&run);
    stray_stream_text_is_refused(&run);
    connection_floods_are_capped(&run);
    request_floods_are_rate_limited(&run);
}

/// Eight copies of one signed job posted at once to one gateway: one runs, the others are
/// refused as duplicates (the gateway checks what is in flight again after its chain lookups,
/// during which the copies arrived).
fn copies_of_one_job_run_once(run: &Running) {
    let net = run.net();
    let gateway = net.nodes[0].http.clone();
    let inference = net.inference().next().unwrap().http.clone();
    let body = job_body(net);
    let client = Client::new();
    let executed = |c: &Client| counter(c, &inference, "proofmesh_jobs_executed_total", &[]);
    let before = executed(&client);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (url, body, barrier) =
                (format!("{gateway}/v1/jobs"), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                let client = Client::new();
                barrier.wait();
                client.post(&url, &body).unwrap()
            })
        })
        .collect();
    let statuses: Vec<u16> = copies
        .into_iter()
        .map(|t| t.join().unwrap().status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(
        executed(&client) - before,
        1.0,
        "the job ran more than once"
    );
}

/// 200 sync requests at once from one peer: its burst is answered, the rest refused.
fn request_floods_are_rate_limited(run: &Running) {
    let validator = &run.net().nodes[0];
    let request = protocol::encode(&protocol::SyncRequest { from: 1, to: 1 });
    let started = Instant::now();
    let (answered, refused) = testnet::garbage::sync_flood(&validator.p2p, request, 200).unwrap();
    // The burst, plus what the bucket refilled while the requests arrived (at most the whole
    // call, on a slow machine), plus slack.
    let limit = actors::network::SYNC_REQUESTS;
    let most = limit.burst + limit.per_second * started.elapsed().as_secs_f64() + 8.0;
    assert!(
        answered as f64 >= limit.burst / 2.0 && answered as f64 <= most && answered < 150,
        "{answered} answered, {refused} refused in {:?}",
        started.elapsed()
    );
    assert_eq!(answered + refused, 200);
    let r = submit_job(&Client::new(), run.net(), &validator.http);
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// One identity opening 30 connections at once keeps at most
/// `MAX_CONNECTIONS_PER_PEER` of them; the node goes on serving.
fn connection_floods_are_capped(run: &Running) {
    let net = run.net();
    let validator = &net.nodes[0];
    let open =
        testnet::garbage::flood_connections(&validator.p2p, 30, Duration::from_secs(3)).unwrap();
    assert!(
        (1..=actors::network::MAX_CONNECTIONS_PER_PEER as usize).contains(&open),
        "{open} connections of one peer stayed open"
    );
    let r = submit_job(&Client::new(), net, &validator.http);
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// A job call sent straight to an inference node over `/proofmesh/job/1` by a fresh peer gets
/// the gateway's checks: unfunded, expired, underpaid and repeated jobs are refused before any
/// compute; a valid one runs once.
fn direct_job_calls_are_admitted_as_a_gateway_would(run: &Running) {
    let net = run.net();
    let client = Client::new();
    let inference = net.inference().next().unwrap();
    let model = &net.models[0];
    let model_id: kernels::ModelId = model.id.parse().unwrap();
    let price: u128 = model.price.parse().unwrap();
    let input = std::fs::read_to_string(&model.example_input).unwrap();
    let funded = net.client_key().unwrap();
    let now_s = chain::types::now_ms() / 1000;
    let call = |key: &PrivateKeySigner, max_fee: u128, nonce: u64, expiry: u64| {
        let job = chain::JobRequest {
            client: key.address(),
            model_id,
            input_hash: alloy::primitives::keccak256(input.as_bytes()),
            max_fee,
            nonce,
            expiry,
        }
        .sign(key, &net.domain)
        .unwrap();
        let bytes = protocol::encode(&protocol::JobCall {
            job,
            input: input.clone(),
            stream: false,
        });
        let reply = testnet::garbage::call_job(&inference.p2p, bytes).unwrap();
        protocol::decode::<protocol::JobReply>(&reply, protocol::MAX_JOB_BYTES).unwrap()
    };
    let refused = |reply: protocol::JobReply| match reply {
        protocol::JobReply::Refused { code, .. } => code,
        protocol::JobReply::Done { .. } => "done".to_string(),
    };
    let executed = || {
        counter(
            &client,
            &inference.http,
            "proofmesh_jobs_executed_total",
            &[],
        )
    };
    let before = executed();
    let nonce = common::fresh_nonce();
    let stranger = PrivateKeySigner::random();
    assert_eq!(
        refused(call(&stranger, price, nonce, now_s + 600)),
        "insufficient_balance"
    );
    assert_eq!(refused(call(&funded, price, nonce, now_s - 10)), "expired");
    assert_eq!(
        refused(call(&funded, price - 1, nonce, now_s + 600)),
        "fee_too_low"
    );
    assert_eq!(executed(), before, "a refused call was executed");
    assert_eq!(refused(call(&funded, price, nonce, now_s + 600)), "done");
    // The same job again, and another job with its nonce, before a block settles it.
    assert_eq!(
        refused(call(&funded, price, nonce, now_s + 600)),
        "duplicate"
    );
    assert_eq!(
        refused(call(&funded, price, nonce, now_s + 601)),
        "nonce_used"
    );
    assert_eq!(executed(), before + 1.0, "one execution for one paid job");
    // Bought through an API grant: the inference node holds the grant's cap itself (a gateway
    // that let the job through would have it run for nothing), and its expiry.
    let delegate = PrivateKeySigner::random();
    let granted = |cap: u128, expiry: u64, nonce: u64| {
        let grant = chain::ApiGrant {
            client: funded.address(),
            delegate: delegate.address(),
            cap,
            expiry,
            models: vec![],
        }
        .sign(&funded, &net.domain)
        .unwrap();
        let job = chain::JobRequest {
            client: funded.address(),
            model_id,
            input_hash: alloy::primitives::keccak256(input.as_bytes()),
            max_fee: price,
            nonce,
            expiry: now_s + 600,
        }
        .sign_granted(&delegate, grant, &net.domain)
        .unwrap();
        let bytes = protocol::encode(&protocol::JobCall {
            job,
            input: input.clone(),
            stream: false,
        });
        let reply = testnet::garbage::call_job(&inference.p2p, bytes).unwrap();
        refused(protocol::decode::<protocol::JobReply>(&reply, protocol::MAX_JOB_BYTES).unwrap())
    };
    let nonce = common::fresh_nonce();
    assert_eq!(granted(price - 1, now_s + 600, nonce), "grant_exhausted");
    assert_eq!(granted(price, now_s - 1, nonce), "expired");
    assert_eq!(
        executed(),
        before + 1.0,
        "a refused grant's job was executed"
    );
    assert_eq!(granted(price, now_s + 600, nonce), "done");
    assert!(
        counter(
            &client,
            &inference.http,
            "proofmesh_jobs_declined_total",
            &["insufficient_balance"]
        ) >= 1.0
    );
}

/// Streamed text (`/proofmesh/stream/1`) for a job the gateway did not route to the sender,
/// or that does not decode, is answered `false` (stop) and relayed nowhere; the node keeps
/// serving.
fn stray_stream_text_is_refused(run: &Running) {
    let net = run.net();
    let validator = &net.nodes[0];
    let stray = protocol::encode(&protocol::StreamChunk {
        job: chain::JobId(chain::B256::repeat_byte(9)),
        seq: 0,
        text: "injected".into(),
    });
    let [v0, v1] = protocol::WIRE_VERSION.to_le_bytes();
    for bytes in [stray, vec![v0, v1, 0xff, 0xfe, 3]] {
        let reply = testnet::garbage::call_stream(&validator.p2p, bytes).unwrap();
        assert!(!protocol::decode::<bool>(&reply, 64).unwrap());
    }
    let r = submit_job(&Client::new(), net, &validator.http);
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// Capabilities that do not come from the executor they name (forged, or a real one replayed
/// by another peer) are rejected and never route a job: every job through the validator's
/// gateway still reaches the real inference node.
fn spoofed_capabilities_route_no_job(run: &Running) {
    let net = run.net();
    let client = Client::new();
    let validator = &net.nodes[0];
    let inference = net.inference().next().unwrap();
    let captured = testnet::garbage::capture(
        &validator.p2p,
        topics::CAPABILITIES,
        1,
        Duration::from_secs(20),
        || {},
    )
    .unwrap();
    assert_eq!(captured.len(), 1, "no capability seen on gossip");
    let real = protocol::decode_capability(&captured[0]).unwrap();
    let forged = protocol::SignedCapability::sign(
        protocol::Capability {
            address: real.capability.address,
            peer: libp2p::PeerId::random().to_bytes(),
            models: real.capability.models.clone(),
            load: 0,
            issued_ms: chain::types::now_ms(),
        },
        &PrivateKeySigner::random(),
        &net.domain,
    )
    .unwrap();
    let rejected = |why: &str| {
        counter(
            &client,
            &validator.http,
            "proofmesh_gossip_rejected_total",
            &[topics::CAPABILITIES, why],
        )
    };
    let before = (rejected("wrong_peer"), rejected("bad_signature"));
    let sent = testnet::garbage::publish(
        &validator.p2p,
        topics::CAPABILITIES,
        vec![captured[0].clone(), protocol::encode(&forged)],
    )
    .unwrap();
    assert_eq!(sent, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rejected("wrong_peer") < before.0 + 1.0 || rejected("bad_signature") < before.1 + 1.0 {
        assert!(
            Instant::now() < deadline,
            "the spoofed capabilities were not rejected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..6 {
        let r = submit_job(&client, net, &validator.http);
        assert_eq!(r.status, 200, "{:?}", r.body);
        let by: Address = r.body["executed_by"].as_str().unwrap().parse().unwrap();
        assert_eq!(by, inference.address);
    }
}

/// A record captured from gossip and republished by a fresh peer once its job is settled: the
/// validator drops it on a lookup (no signature check, no re-execution), keeps nothing and
/// relays nothing.
fn replayed_settled_records_cost_no_verification(run: &Running) {
    let net = run.net();
    let client = Client::new();
    let validator = &net.nodes[0];
    let inference = net.inference().next().unwrap().clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let target = validator.p2p.clone();
    let eavesdropper = std::thread::spawn(move || {
        testnet::garbage::capture(
            &target,
            topics::RECORDS,
            1,
            Duration::from_secs(60),
            move || {
                let _ = tx.send(());
            },
        )
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the eavesdropper never joined the records topic");
    std::thread::sleep(Duration::from_secs(2));

    let reply = submit_job(&client, net, &inference.http);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let job = reply.body["job_id"].as_str().unwrap().to_string();
    let captured = eavesdropper.join().unwrap().unwrap();
    assert_eq!(captured.len(), 1, "the record was not seen on gossip");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(&format!("{}/v1/receipts/{job}", validator.http))
        .map(|r| r.status != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "job {job} never settled");
        std::thread::sleep(Duration::from_millis(200));
    }

    let verified = |node: &str| counter(&client, node, "proofmesh_records_verified_total", &[]);
    let skipped =
        |node: &str, why: &str| counter(&client, node, "proofmesh_records_rejected_total", &[why]);
    // The validator verified it before (it relayed it to us), but its cache lets go of a record
    // once its job is settled; the inference node never verified it (it made it). Both drop it
    // on the settled-job lookup, before any signature check.
    let why = "settled";
    for node in [validator, &inference] {
        let before = (verified(&node.http), skipped(&node.http, why));
        let sent = testnet::garbage::publish(&node.p2p, topics::RECORDS, vec![captured[0].clone()])
            .unwrap();
        assert_eq!(sent, 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while skipped(&node.http, why) < before.1 + 1.0 {
            assert!(
                Instant::now() < deadline,
                "{}: the replay was never dropped as {why}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            verified(&node.http),
            before.0,
            "{}: a settled record was verified again",
            node.name
        );
        assert_eq!(
            counter(&client, &node.http, "proofmesh_mempool_records", &[]),
            0.0,
            "{}: a settled record sat in the mempool",
            node.name
        );
    }
}

fn gossiped_transactions_are_relayed_only_once_admitted(run: &Running) {
    let net = run.net();
    let client = Client::new();
    let domain = net.domain;
    let (target, other) = (&net.nodes[0], &net.nodes[1]);
    let txs_in = |node: &str| {
        counter(
            &client,
            node,
            "proofmesh_gossip_received_total",
            &[topics::TXS],
        )
    };
    let rejected = |reason: &str| {
        counter(
            &client,
            &target.http,
            "proofmesh_gossip_rejected_total",
            &[topics::TXS, reason],
        )
    };
    // Oversize for the topic: dropped by the transport, never decoded; a small junk message
    // sent after it reaches the node's decoder.
    let received = txs_in(&target.http);
    let malformed = rejected("malformed");
    let sent = testnet::garbage::publish(
        &target.p2p,
        topics::TXS,
        vec![
            vec![7u8; protocol::MAX_TX_BYTES * 3],
            [&protocol::WIRE_VERSION.to_le_bytes()[..], &[0xee, 0xee]].concat(),
        ],
    )
    .unwrap();
    assert_eq!(sent, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rejected("malformed") < malformed + 1.0 {
        assert!(Instant::now() < deadline, "the small junk never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        txs_in(&target.http),
        received + 1.0,
        "the oversize message reached the application"
    );

    let before = txs_in(&other.http);

    let stranger = PrivateKeySigner::random();
    let unfunded = transfer(&stranger, &domain, Address::repeat_byte(1), OPG, 0);
    let mut forged = transfer(&stranger, &domain, Address::repeat_byte(1), 1, 0);
    forged.signature.0[10] ^= 0x40;
    let key = net.client_key().unwrap();
    let next = client
        .get(&format!("{}/v1/accounts/{}", target.http, key.address()))
        .unwrap()
        .body["next_nonce"]
        .as_u64()
        .unwrap();
    let to = PrivateKeySigner::random().address();
    let honest = transfer(&key, &domain, to, 3 * OPG, next);
    let mut malleated = honest.clone();
    malleated.signature = malleate(&malleated.signature);
    let sent = testnet::garbage::publish(
        &target.p2p,
        topics::TXS,
        vec![
            protocol::encode(&unfunded),
            protocol::encode(&forged),
            protocol::encode(&malleated),
        ],
    )
    .unwrap();
    assert_eq!(sent, 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rejected("bad_signature") < 2.0 || rejected("insufficient_balance") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the target never refused them: bad_signature {}, insufficient_balance {}",
            rejected("bad_signature"),
            rejected("insufficient_balance")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Gossipsub relays within a heartbeat; give it several.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        txs_in(&other.http),
        before,
        "a transaction the target refused was relayed to the other node"
    );

    // The canonical original, posted over HTTP: admitted, relayed, applied everywhere.
    let r = client
        .post(
            &format!("{}/v1/txs", target.http),
            &serde_json::to_value(&honest).unwrap(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = net.nodes.iter().all(|n| {
            client
                .get(&format!("{}/v1/accounts/{to}", n.http))
                .ok()
                .and_then(|r| {
                    r.body["balance"]
                        .as_str()
                        .map(|b| b == (3 * OPG).to_string())
                })
                .unwrap_or(false)
        });
        if applied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the honest transfer never applied everywhere"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        txs_in(&other.http) > before,
        "the admitted transaction was relayed"
    );
}
