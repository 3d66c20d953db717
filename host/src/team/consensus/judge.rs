//! The verifiers' judgement of one candidate: every verifier asked at
//! once, each under its own limits; one that fails is left out and
//! reported, not fatal to the ballot.

use std::sync::Arc;

use tracing::Instrument;

use super::{served, wit_task, TaskSpec, Team};
use crate::plugin::{CallInfo, Candidate, Invocation, Verdict};
use crate::team::events::Served;
use crate::team::services::RoutedServices;

/// The verifiers' verdicts on a candidate and the versions behind them,
/// and the verifiers that failed (who, and why).
#[derive(Default)]
pub(super) struct Judged {
    pub(super) verdicts: Vec<Verdict>,
    pub(super) judges: Vec<Served>,
    pub(super) failures: Vec<(Served, String)>,
}

impl Team {
    /// The verifiers' verdicts on `c`, asked all at once, in the team's
    /// order of verifiers; a verifier that fails is left out and reported.
    pub(super) async fn judge(
        &self,
        run: &str,
        spec: &TaskSpec,
        round: u32,
        c: &Candidate,
        services: &Arc<RoutedServices>,
    ) -> Judged {
        let calls = self.verifiers.iter().map(|v| {
            let task = wit_task(run, spec, &v.config, round, c.replica, spec.replicas, &[]);
            let inv = Invocation {
                grants: v.grants,
                limits: v.limits.clone(),
                services: Some(services.for_call()),
                info: CallInfo {
                    run_id: run.into(),
                    task_id: spec.id.clone(),
                    replica: c.replica,
                    ..Default::default()
                },
            };
            async move {
                let plugin = v.current();
                let span =
                    crate::otel::plugin_span("verifier", &v.name, plugin.hash(), plugin.version());
                let out = self
                    .runtime
                    .verify(&plugin, &inv, &task, c)
                    .instrument(span.clone())
                    .await;
                crate::otel::record_plugin(&span, &out, |verdict| {
                    if verdict.pass { "pass" } else { "fail" }.to_string()
                });
                (served(v, &plugin), plugin.name().to_string(), out)
            }
        });
        let mut judged = Judged::default();
        for (by, name, out) in futures::future::join_all(calls).await {
            match out {
                Ok(verdict) => {
                    let verdict = under_host_name(verdict, &by, &name);
                    judged.verdicts.push(verdict);
                    judged.judges.push(by);
                }
                Err(e) => {
                    let what = format!("verifier {name} on replica {}: {e}", c.replica);
                    judged.failures.push((by, what));
                }
            }
        }
        judged
    }
}

/// A verdict as the host records it: under the team's name for the
/// verifier the host called (`by`; its SHA-256 goes beside it in the
/// ballot's record), whatever name the plugin wrote into the verdict. A
/// plugin that wrote another name is logged: a voter that weighs verdicts
/// by verifier must not be told that `numeric-check` judged a ballot when
/// some other component did.
pub(crate) fn under_host_name(mut verdict: Verdict, by: &Served, plugin: &str) -> Verdict {
    if verdict.verifier != by.plugin {
        tracing::warn!(
            verifier = %by.plugin,
            sha256 = %by.hash,
            "verifier `{}` ({plugin}) signed its verdict as {:?}; it is recorded as `{}`",
            by.plugin,
            verdict.verifier.chars().take(64).collect::<String>(),
            by.plugin
        );
        verdict.verifier = by.plugin.clone();
    }
    verdict
}
