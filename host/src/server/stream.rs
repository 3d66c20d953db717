//! A streamed reply (`"stream": true`): server-sent events fed by the
//! run's progress and then its result, in OpenAI's chunk shape.

use axum::body::Bytes;
use axum::http::header;
use axum::response::Response;
use serde_json::json;

use super::reply::{conclave, created, refusal, usage, Refused};
use super::{no_slot, CancelOnDrop, Outcome, Reply};
use crate::team::job::JobResult;

/// Server-sent events: the role first, progress as comments while the team
/// works, then the answer, the final chunk with the `conclave` object, and
/// `[DONE]`. Dropping the stream (the client left) cancels the run.
pub(super) fn stream(
    job: tokio::task::JoinHandle<Outcome>,
    guard: CancelOnDrop,
    mut progress: tokio::sync::mpsc::UnboundedReceiver<String>,
    reply: Reply,
    run_id: String,
) -> Response {
    let id = format!("chatcmpl-{run_id}");
    let model = reply.model.clone();
    // One chunk: a choice's delta, or (`None`) no choice, for the usage.
    let chunk = move |choice: Option<(usize, serde_json::Value, Option<&str>)>,
                      extra: Option<serde_json::Value>| {
        let choices = match choice {
            Some((index, delta, finish)) => {
                json!([{"index": index, "delta": delta, "finish_reason": finish}])
            }
            None => json!([]),
        };
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created(),
            "model": model,
            "choices": choices,
        });
        if let Some(extra) = extra {
            for (k, v) in extra.as_object().into_iter().flatten() {
                c[k] = v.clone();
            }
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let body = async_stream(move |tx| async move {
        let _guard = guard;
        if tx
            .send(chunk(
                Some((0, json!({"role": "assistant", "content": ""}), None)),
                None,
            ))
            .await
            .is_err()
        {
            return;
        }
        let mut job = job;
        let outcome = loop {
            tokio::select! {
                r = &mut job => break r.unwrap_or(Outcome::NoSlot),
                Some(p) = progress.recv() => {
                    if tx.send(Bytes::from(format!(": {p}\n\n"))).await.is_err() {
                        return;
                    }
                }
            }
        };
        let app = &reply.app;
        // An error event in OpenAI's shape, then [DONE].
        let fail =
            |e: Refused, r: Option<&JobResult>| Bytes::from(format!("data: {}\n\n", e.body(r)));
        let (r, digest) = match outcome {
            Outcome::Ran {
                result,
                deadline_passed,
                digest,
                submitted,
                journal_error,
            } => match super::cluster::handed_over(
                reply.lead.as_ref(),
                &result,
                deadline_passed,
                &super::cluster::Journaling {
                    submitted,
                    error: journal_error,
                },
            )
            .or_else(|| refusal(&result, app.config.deadline, deadline_passed))
            {
                None => (result, digest),
                Some(e) => {
                    let _ = tx.send(fail(e, Some(&*result))).await;
                    let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
                    return;
                }
            },
            Outcome::Left => {
                let e = super::cluster::left_the_queue(reply.lead.as_ref())
                    .unwrap_or_else(|| no_slot(app));
                let _ = tx.send(fail(e, None)).await;
                let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
                return;
            }
            Outcome::NoSlot => {
                let _ = tx.send(fail(no_slot(app), None)).await;
                let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
                return;
            }
        };
        let about = json!({"conclave": conclave(&r, &reply.candidates(), digest.as_deref())});
        let messages = reply.messages(&r);
        let last = messages.len() - 1;
        for (i, (mut delta, _)) in messages.into_iter().enumerate() {
            if i > 0 {
                let role = json!({"role": "assistant", "content": ""});
                if tx.send(chunk(Some((i, role, None)), None)).await.is_err() {
                    return;
                }
            }
            if let Some(m) = delta.as_object_mut() {
                m.remove("role");
            }
            let _ = tx.send(chunk(Some((i, delta, None)), None)).await;
            // The `conclave` object rides on the last choice's finish.
            let extra = (i == last).then(|| about.clone());
            let _ = tx
                .send(chunk(Some((i, json!({}), Some("stop"))), extra))
                .await;
        }
        if reply.include_usage {
            // As OpenAI does: a last chunk with no choices and the usage.
            let mut extra = about.clone();
            extra["usage"] = usage(&r);
            let _ = tx.send(chunk(None, Some(extra))).await;
        }
        let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("a valid response")
}

/// A body fed by `producer` through a channel; when the client goes away
/// the body is dropped, and with it the producer's task.
fn async_stream<F, Fut>(producer: F) -> axum::body::Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let task = tokio::spawn(producer(tx));
    let abort = task.abort_handle();
    let stream = futures::stream::unfold((rx, AbortOnDrop(abort)), |(mut rx, guard)| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), (rx, guard)))
    });
    axum::body::Body::from_stream(stream)
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
