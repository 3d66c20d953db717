//! A fake OpenAI-compatible server for tests: real HTTP/1.1 over a loopback
//! socket, written by hand so that it can misbehave precisely (reset the
//! connection mid-body, trickle bytes, hang).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// A normal completion whose text is this.
    Reply(String),
    /// A completion without a `usage` object.
    ReplyNoUsage(String),
    /// An HTTP status with a short body and optional `Retry-After` seconds.
    Status(u16, Option<u32>),
    /// Never answer (until the client gives up).
    Hang,
    /// Headers announcing a body, half the body, then close the socket.
    ResetMidBody,
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// 200 with JSON lacking `choices`.
    NoChoices,
    /// 200 with a body of this many bytes.
    Huge(usize),
    /// A normal reply sent one byte every `delay`.
    Trickle(Duration),
    /// A streamed reply (server-sent events), one event per word.
    Stream(String),
    /// A normal completion whose text is this, held back until the test
    /// lets it go (`notify_one` on the gate): a model call kept open for
    /// exactly as long as a test needs.
    Gate(Arc<tokio::sync::Notify>, String),
    /// The front of this queue, which the test fills while the server runs;
    /// the boxed behaviour while the queue is empty.
    Queue(
        Arc<Mutex<std::collections::VecDeque<Behaviour>>>,
        Box<Behaviour>,
    ),
}

/// A running fake server. Dropping it stops accepting.
pub struct FakeServer {
    pub addr: std::net::SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Serves `script` in order, then `then` for every later request.
    pub async fn start(script: Vec<Behaviour>, then: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (r2, b2) = (requests.clone(), bodies.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let (r, b, script, then) = (r2.clone(), b2.clone(), script.clone(), then.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, r, b, script, then).await;
                });
            }
        });
        FakeServer {
            addr,
            requests,
            bodies,
            task,
        }
    }

    /// A server that always does `b`.
    pub async fn always(b: Behaviour) -> Self {
        Self::start(vec![], b).await
    }

    /// The base URL to configure a node with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn completion(text: &str, usage: bool) -> String {
    let mut v = serde_json::json!({
        "id": "cmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    });
    if usage {
        v["usage"] =
            serde_json::json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
    }
    v.to_string()
}

async fn read_request(sock: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf[head_end..head_end + len].to_vec()))
}

async fn respond(
    sock: &mut TcpStream,
    status: u16,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    sock.write_all(msg.as_bytes()).await
}

async fn serve(
    mut sock: TcpStream,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    script: Arc<Vec<Behaviour>>,
    then: Behaviour,
) -> std::io::Result<()> {
    while let Some(body) = read_request(&mut sock).await? {
        let n = requests.fetch_add(1, Ordering::SeqCst);
        if let Ok(v) = serde_json::from_slice(&body) {
            bodies.lock().unwrap().push(v);
        }
        let mut b = script.get(n).cloned().unwrap_or_else(|| then.clone());
        while let Behaviour::Queue(queue, otherwise) = b {
            let front = queue.lock().unwrap().pop_front();
            b = front.unwrap_or(*otherwise);
        }
        match b {
            Behaviour::Reply(t) => respond(&mut sock, 200, "", &completion(&t, true)).await?,
            Behaviour::Gate(gate, t) => {
                gate.notified().await;
                respond(&mut sock, 200, "", &completion(&t, true)).await?
            }
            Behaviour::ReplyNoUsage(t) => {
                respond(&mut sock, 200, "", &completion(&t, false)).await?
            }
            Behaviour::Status(code, retry) => {
                let extra = retry
                    .map(|s| format!("retry-after: {s}\r\n"))
                    .unwrap_or_default();
                respond(
                    &mut sock,
                    code,
                    &extra,
                    "{\"error\":{\"message\":\"test\"}}",
                )
                .await?
            }
            Behaviour::Queue(..) => unreachable!("a queue is unwrapped above"),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Behaviour::ResetMidBody => {
                let body = completion("this will be cut", true);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(&body.as_bytes()[..body.len() / 2]).await?;
                sock.flush().await?;
                let std = sock.into_std()?;
                // Linger 0: close with a reset rather than a clean FIN.
                socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO))?;
                drop(std);
                return Ok(());
            }
            Behaviour::MalformedJson => respond(&mut sock, 200, "", "{\"choices\": [oops").await?,
            Behaviour::NoChoices => {
                respond(
                    &mut sock,
                    200,
                    "",
                    "{\"id\":\"x\",\"object\":\"chat.completion\"}",
                )
                .await?
            }
            Behaviour::Huge(n) => {
                let pad = "x".repeat(n);
                respond(&mut sock, 200, "", &completion(&pad, true)).await?
            }
            Behaviour::Trickle(delay) => {
                let body = completion("slow", true);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
                sock.write_all(head.as_bytes()).await?;
                for b in body.as_bytes() {
                    sock.write_all(&[*b]).await?;
                    sock.flush().await?;
                    tokio::time::sleep(delay).await;
                }
            }
            Behaviour::Stream(text) => {
                let mut events = String::new();
                for w in text.split_inclusive(' ') {
                    let ev =
                        serde_json::json!({"choices": [{"index": 0, "delta": {"content": w}}]});
                    events.push_str(&format!("data: {ev}\n\n"));
                }
                events.push_str("data: [DONE]\n\n");
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n", events.len());
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(events.as_bytes()).await?;
            }
        }
    }
    Ok(())
}
