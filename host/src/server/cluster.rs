//! The server in cluster mode ([`crate::cluster`]): only the process that
//! holds the coordinator lease runs requests; a standby answers 503 naming
//! the coordinator, and so does its `/healthz`, so that a load balancer
//! sends clients to the coordinator.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::reply::Refused;
use super::App;
use crate::cluster::coordinator::Coordinator;
use crate::cluster::lease::Role;
use crate::team::consensus::StopReason;
use crate::team::job::JobResult;

/// This process coordinating a run in `term`.
#[derive(Clone)]
pub(super) struct Lead {
    coordinator: Arc<Coordinator>,
    term: u64,
}

/// Whether this server runs a request now: `Ok(None)` outside cluster
/// mode, `Ok(Some(_))` as the coordinator, else the 503 that says where it
/// stands.
pub(super) fn admit(cluster: Option<&Arc<Coordinator>>) -> Result<Option<Lead>, Box<Response>> {
    let Some(c) = cluster else {
        return Ok(None);
    };
    match (c.role(), c.serving()) {
        (Role::Leading { term }, Some(ready)) if ready == term => Ok(Some(Lead {
            coordinator: c.clone(),
            term,
        })),
        (Role::Leading { term }, _) => Err(Box::new(unavailable(
            "standby",
            format!(
                "this server has just taken the coordinator lease (term {term}) and is stopping the runs of the term it lost before; try again in a second"
            ),
            None,
        ))),
        (other, _) => Err(Box::new(standby(&other))),
    }
}

impl Lead {
    /// Registers `run` with the cluster before it is journaled, and
    /// cancels it if this process stops coordinating.
    pub(super) async fn start(&self, run: &str, cancel: &CancellationToken) -> Result<(), Refused> {
        self.coordinator
            .register(run, self.term)
            .await
            .map_err(|message| Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "cluster_unavailable",
                message,
            })?;
        // The lease may have changed hands since the request was admitted.
        if self.coordinator.serving() != Some(self.term) {
            self.coordinator.finished(run, true).await;
            return Err(Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "coordinator_changed",
                message: format!(
                    "this server stopped coordinating in term {} before the request started; it never ran: send it again, to the cluster's coordinator",
                    self.term
                ),
            });
        }
        let deposed = self.coordinator.while_leading(self.term);
        let run = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = deposed.cancelled() => run.cancel(),
                _ = run.cancelled() => deposed.cancel(),
            }
        });
        Ok(())
    }

    /// `run` is over here; `durable`: its end (or nothing at all) is in
    /// the journal, so no successor needs to resume it.
    pub(super) async fn end(&self, run: &str, durable: bool) {
        self.coordinator.finished(run, durable).await;
    }
}

/// 503 with `code` and `message`, `Retry-After: 1`, and where the
/// coordinator serves (`at`), if known.
fn unavailable(code: &'static str, message: String, at: Option<String>) -> Response {
    let mut r = Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code,
        message,
    }
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1));
    if let Some(v) = at.and_then(|u| HeaderValue::from_str(&u).ok()) {
        r.headers_mut().insert("conclave-coordinator", v);
    }
    r
}

/// 503 from a standby: who coordinates, and where it serves.
pub(super) fn standby(role: &Role) -> Response {
    let (message, at) = match role {
        Role::Standby { leader: Some(h) } => (
            format!(
                "this server is a standby in its cluster; the coordinator is {}{}",
                h.id,
                h.http
                    .as_deref()
                    .map(|u| format!(", serving at {u}"))
                    .unwrap_or_default()
            ),
            h.http.clone(),
        ),
        Role::Standby { leader: None } => (
            "this server is a standby in its cluster and no coordinator holds the lease now; try again in a few seconds".to_string(),
            None,
        ),
        Role::Deposed { why, .. } => (
            format!(
                "this server lost the coordinator lease ({why}) and rejoins its cluster as a standby; try again in a few seconds"
            ),
            None,
        ),
        Role::Leading { .. } => ("this server coordinates".to_string(), None),
    };
    unavailable("standby", message, at)
}

/// `/healthz`: `ok` from a server that runs requests; 503 from a standby.
pub(super) async fn healthz(State(app): State<Arc<App>>) -> Response {
    match admit(app.config.cluster.as_ref()) {
        Ok(_) => "ok\n".into_response(),
        Err(refused) => *refused,
    }
}

/// Why this server no longer coordinates, as its clients are told.
fn why_not_leading(c: &Coordinator) -> String {
    match c.role() {
        Role::Deposed { why, .. } => why,
        _ => c
            .lost_lease()
            .unwrap_or_else(|| "another server coordinates now".to_string()),
    }
}

/// What a request answers that was cancelled while it waited for a slot,
/// its client still there: in cluster mode, only the term that admitted
/// it ending cancels it (this server lost the lease, even if it noticed
/// late or leads again by now): it never ran, ask the coordinator again.
/// `None` outside cluster mode.
pub(super) fn left_the_queue(lead: Option<&Lead>) -> Option<Refused> {
    let lead = lead?;
    let why = why_not_leading(&lead.coordinator);
    Some(Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "coordinator_changed",
        message: format!(
            "this server stopped coordinating in term {} ({why}) while the request waited for a slot; it never ran: send it again, to the cluster's coordinator",
            lead.term
        ),
    })
}

/// How far a run of a coordinator reached its journal.
pub(super) struct Journaling {
    /// Its submission is stored: a successor finds it.
    pub(super) submitted: bool,
    /// Why not every record is stored (its end included), if not.
    pub(super) error: Option<String>,
}

/// What a run of a coordinator answers, in cluster mode, when it is not
/// over as far as the cluster knows (`None`: answer as outside cluster
/// mode):
///
/// - its submission never reached the journal and it was cut short: it
///   never ran as far as the cluster knows; 503 `coordinator_changed`,
///   send it again;
/// - it was cancelled, its client still there and its deadline not
///   passed, or its journal was fenced before its end was written: only
///   the term that admitted it ending does that to a run
///   (this server lost the lease, perhaps noticed only after the run
///   stopped, or another process took the run over), so it is not over:
///   the cluster's coordinator (this server again, perhaps, in a later
///   term) resumes it; 503 `coordinator_changed`;
/// - its end is not in the journal: its decision is not durable, so it is
///   not given; the coordinator resumes the run; 503
///   `journal_unavailable`, with why.
pub(super) fn handed_over(
    lead: Option<&Lead>,
    r: &JobResult,
    deadline_passed: bool,
    journal: &Journaling,
) -> Option<Refused> {
    let lead = lead?;
    // Fenced: this process lost the lease (or the run was taken over)
    // before its end was written; the next coordinator goes on with it.
    let fenced = journal
        .error
        .as_deref()
        .is_some_and(|e| e.contains(crate::journal::TAKEN_OVER));
    let cancelled = (matches!(r.stop, StopReason::Cancelled(_)) && !deadline_passed) || fenced;
    if !journal.submitted && (cancelled || journal.error.is_some()) {
        let why = journal.error.as_deref().unwrap_or("it was cut short");
        return Some(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "coordinator_changed",
            message: format!(
                "run {} never reached the cluster's journal ({why}); it never ran as far as the cluster knows: send it again, to the cluster's coordinator",
                r.run_id
            ),
        });
    }
    if cancelled {
        let why = why_not_leading(&lead.coordinator);
        return Some(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "coordinator_changed",
            message: format!(
                "this server lost the coordinator lease of term {} ({why}) while running {}: the cluster's coordinator resumes the run from the journal (`conclave trace {} --cluster URL` shows it)",
                lead.term, r.run_id, r.run_id
            ),
        });
    }
    let e = journal.error.as_deref()?;
    Some(Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "journal_unavailable",
        message: format!(
            "this server could not write the end of run {} to the cluster's journal ({e}), so its answer is not given: the cluster's coordinator resumes the run from the journal (`conclave trace {} --cluster URL` shows it)",
            r.run_id, r.run_id
        ),
    })
}
