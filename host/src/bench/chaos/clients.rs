//! The benchmark's clients: each asks one question after another, and
//! asks again after a 503 or a dropped connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::GIVE_UP;

/// A request's life: when it was first sent, when it was answered 200
/// (unset: never), why not, and how often it was asked again.
pub(super) struct Asked {
    pub(super) sent: Instant,
    /// When its last try was sent.
    pub(super) attempt: Instant,
    pub(super) answered: Option<Instant>,
    pub(super) failed: Option<String>,
    pub(super) retries: usize,
    /// Why it was asked again, counted.
    pub(super) why: BTreeMap<String, usize>,
}

/// One client: asks one question after another until `stop`, each one
/// again (of the other server) after a 503 or a dropped connection, until
/// `GIVE_UP`.
pub(super) async fn client(
    id: usize,
    http: reqwest::Client,
    ports: Vec<u16>,
    stop: Instant,
    log: Arc<Mutex<Vec<Asked>>>,
) {
    let mut n = 0;
    let mut which = id % ports.len();
    while Instant::now() < stop {
        n += 1;
        let body = serde_json::json!({"messages": [{"role": "user", "content": format!("What is {id} + {n}?")}]});
        let sent = Instant::now();
        let mut attempt = sent;
        let mut retries = 0;
        let mut why: BTreeMap<String, usize> = BTreeMap::new();
        let (answered, failed) = loop {
            if sent.elapsed() > GIVE_UP {
                break (None, Some(format!("no answer after {retries} tries")));
            }
            attempt = Instant::now();
            let reply = http
                .post(format!(
                    "http://127.0.0.1:{}/v1/chat/completions",
                    ports[which]
                ))
                .json(&body)
                .send()
                .await;
            match reply {
                Ok(r) if r.status().as_u16() == 200 => break (Some(Instant::now()), None),
                Ok(r) if r.status().as_u16() == 503 => {
                    let after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(1)
                        .min(2);
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let code = body["error"]["code"].as_str().unwrap_or("?");
                    *why.entry(format!("503 {code}")).or_default() += 1;
                    retries += 1;
                    which = (which + 1) % ports.len();
                    tokio::time::sleep(Duration::from_millis(200 * after)).await;
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
                    break (None, Some(format!("{status} {code}").trim().to_string()));
                }
                Err(_) => {
                    *why.entry("no connection".into()).or_default() += 1;
                    retries += 1;
                    which = (which + 1) % ports.len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        log.lock().expect("not poisoned").push(Asked {
            sent,
            attempt,
            answered,
            failed,
            retries,
            why,
        });
    }
}
