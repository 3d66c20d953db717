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
/// mode, `Ok(Some(_))` as the coordinator, else where it stands (what
/// [`standby`] answers).
pub(super) fn admit(cluster: Option<&Arc<Coordinator>>) -> Result<Option<Lead>, Role> {
    let Some(c) = cluster else {
        return Ok(None);
    };
    match c.role() {
        Role::Leading { term } => Ok(Some(Lead {
            coordinator: c.clone(),
            term,
        })),
        other => Err(other),
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
            format!("this server lost the coordinator lease ({why}) and is stopping"),
            None,
        ),
        Role::Leading { .. } => ("this server coordinates".to_string(), None),
    };
    let mut r = Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "standby",
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

/// `/healthz`: `ok` from a server that runs requests; 503 from a standby.
pub(super) async fn healthz(State(app): State<Arc<App>>) -> Response {
    match admit(app.config.cluster.as_ref()) {
        Ok(_) => "ok\n".into_response(),
        Err(role) => standby(&role),
    }
}

/// What a request answers that was cancelled while it waited for a slot,
/// its client still there: in cluster mode, this server lost the lease
/// (the request never ran: ask the coordinator again); `None` otherwise.
pub(super) fn left_the_queue(app: &App) -> Option<Refused> {
    let c = app.config.cluster.as_ref()?;
    let why = match c.role() {
        Role::Deposed { why, .. } => why,
        Role::Standby { .. } => "another server coordinates now".to_string(),
        Role::Leading { .. } => return None,
    };
    Some(Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "coordinator_changed",
        message: format!(
            "this server stopped coordinating ({why}) while the request waited for a slot; it never ran: send it again, to the cluster's coordinator"
        ),
    })
}

/// What a run cancelled because this server lost the lease answers: it is
/// not over, the next coordinator resumes it.
pub(super) fn handed_over(app: &App, r: &JobResult) -> Option<Refused> {
    let c = app.config.cluster.as_ref()?;
    if !matches!(r.stop, StopReason::Cancelled(_)) {
        return None;
    }
    match c.role() {
        Role::Deposed { why, .. } => Some(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "coordinator_changed",
            message: format!(
                "this server lost the coordinator lease ({why}) while running {}: the next coordinator resumes the run from the journal (`conclave trace {} --cluster URL` shows it)",
                r.run_id, r.run_id
            ),
        }),
        _ => None,
    }
}
