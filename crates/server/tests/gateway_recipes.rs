//! Lock and Election on the JSON gateway (`/v3/lock/*`, `/v3/election/*`, with `observe` as
//! a streamed response), run against raftkv and, when it is installed, etcd 3.4: the answers
//! must have the same shape (fields and their JSON types) on both.

mod common;

use std::time::Duration;

use common::{Cluster, Opts, http_post, json_shape as shape, start_etcd};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START: Duration = Duration::from_secs(20);

fn b64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn post(port: u16, path: &str, body: &Value) -> Value {
    let text = http_post(port, path, &body.to_string());
    // A chunked body (etcd's error answers): the JSON between the chunk sizes.
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => &text[a..=b],
        _ => text.trim(),
    };
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
}

/// Reads an observe stream until a `result` line carries `value` (base64); panics on an
/// error line or after the timeout.
async fn expect_observed(stream: &mut tokio::net::TcpStream, seen: &mut String, value: &str) -> Value {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        while let Some(end) = seen.find('\n') {
            let line: String = seen.drain(..=end).collect();
            let Some(start) = line.find("{\"") else { continue };
            let Ok(v) = serde_json::from_str::<Value>(line[start..].trim()) else { continue };
            assert!(v.get("error").is_none(), "observe failed: {v}");
            if v["result"]["kv"]["value"] == value {
                return v;
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("observe: no {value} in time; got {seen}"))
            .expect("read the observe stream");
        assert!(n > 0, "observe stream closed; got {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Runs the lock and election calls on the server at `port`; returns every answer in order.
async fn scenario(port: u16) -> Vec<Value> {
    let mut answers = Vec::new();
    let granted = post(port, "/v3/lease/grant", &serde_json::json!({"TTL": "30"}));
    let lease = granted["ID"].as_str().expect("lease id").to_string();

    let locked = post(port, "/v3/lock/lock", &serde_json::json!({"name": b64("gw-lock"), "lease": lease}));
    let key = locked["key"].as_str().unwrap_or_else(|| panic!("lock: {locked}")).to_string();
    assert!(key.starts_with(&b64("gw-lock/")[..8]), "lock key {key}");
    answers.push(locked);
    answers.push(post(port, "/v3/lock/unlock", &serde_json::json!({"key": key})));

    let campaigned = post(
        port,
        "/v3/election/campaign",
        &serde_json::json!({"name": b64("gw-elect"), "lease": lease, "value": b64("one")}),
    );
    let leader = campaigned["leader"].clone();
    assert_eq!(leader["name"], b64("gw-elect"), "campaign: {campaigned}");
    answers.push(campaigned);

    // Observe streams the current leader's value, then the proclaimed one.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let body = serde_json::json!({"name": b64("gw-elect")}).to_string();
    let request = format!(
        "POST /v3/election/observe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send observe");
    let mut seen = String::new();
    answers.push(expect_observed(&mut stream, &mut seen, &b64("one")).await);
    answers.push(post(
        port,
        "/v3/election/proclaim",
        &serde_json::json!({"leader": leader, "value": b64("two")}),
    ));
    answers.push(expect_observed(&mut stream, &mut seen, &b64("two")).await);

    let current = post(port, "/v3/election/leader", &serde_json::json!({"name": b64("gw-elect")}));
    assert_eq!(current["kv"]["value"], b64("two"), "leader: {current}");
    answers.push(current);
    answers.push(post(port, "/v3/election/resign", &serde_json::json!({"leader": leader})));
    // No leader now: an error body.
    let none = post(port, "/v3/election/leader", &serde_json::json!({"name": b64("gw-elect")}));
    assert!(none.get("code").is_some(), "leader after resign: {none}");
    answers.push(none);
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_on_the_gateway_like_etcd() {
    let mut c = Cluster::start(1, Opts::default());
    c.wait_leader(START).await;
    let ours = scenario(c.port(0)).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let Some((_etcd, etcd_port, _)) = start_etcd(dir.path()) else { return };
    common::wait_for("etcd", START, || async move { common::status(etcd_port).await.ok() }).await;
    let theirs = scenario(etcd_port).await;
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(shape(a), shape(b), "answer {i}: raftkv {a} vs etcd {b}");
    }
    // The error after resigning: same code and message.
    let (a, b) = (ours.last(), theirs.last());
    assert_eq!(a.map(|v| &v["code"]), b.map(|v| &v["code"]));
    assert_eq!(a.map(|v| &v["error"]), b.map(|v| &v["error"]));
}
