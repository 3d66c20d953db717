//! Replay: every vote of a journaled run counted again from its recorded
//! ballots, with no model call. With the run's own voters, every decision
//! must come out the same (a plugin that changed behaviour shows up as the
//! first differing decision); with another voter, it shows what that
//! policy would have decided (counterfactual evaluation, for free). With
//! another verifier, every recorded candidate is judged again by it (its
//! verdict replaces the recorded ones) before the votes are counted; a
//! verifier that needs a model (`llm-judge`) cannot be replayed without
//! model calls, and says so.
//!
//! Votes journaled with the SHA-256 of the voter component that counted
//! them are checked against the component loaded now: a replay with the
//! run's own voters names every voter whose file changed since the run
//! ([`ReplayReport::swapped`]), whether or not its decisions changed.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::RunLog;
use crate::plugin::checks::vouch;
use crate::plugin::{AnswerKind, Ballot, Invocation, PluginRuntime, Task};
use crate::spec::team::{answer_kind, TeamSpec};
use crate::team::consensus::{describe_as, PluginUse};
use crate::team::events::Event;
use crate::team::job::{load_plugins, JobError};

/// One vote counted again.
#[derive(Clone, Debug, Serialize)]
pub struct Revote {
    pub task: String,
    pub round: u32,
    pub ballots: u32,
    pub recorded: String,
    pub now: String,
}

/// What a replay found.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    pub run: String,
    /// The voter used instead of the recorded ones, if any.
    pub voter: Option<String>,
    /// The verifier that judged the candidates again, if any.
    pub verifier: Option<String>,
    pub votes: usize,
    /// Votes whose decision differs, in order; the first is where the run
    /// diverges.
    pub changed: Vec<Revote>,
    /// The job's recorded answer, and its answer task's final decision now.
    pub answer_before: Option<String>,
    pub answer_now: Option<String>,
    /// The run's gold answer, when it had one, and whether the recorded
    /// answer and the answer now match it (for comparing voters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold: Option<String>,
    pub right_before: Option<bool>,
    pub right_now: Option<bool>,
    /// Voters that are not the component that counted the recorded votes
    /// (replays with the run's own voters only; journals without hashes
    /// say nothing here).
    pub swapped: Vec<Swapped>,
}

/// A voter whose component differs from the one the journal names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Swapped {
    /// The voter, as the team names it.
    pub voter: String,
    /// SHA-256 of the component that counted the recorded votes.
    pub recorded: String,
    /// SHA-256 of the component that counted them again now.
    pub loaded: String,
    /// How many recorded votes that component counted.
    pub votes: u32,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("run {0}: the journal has no submission record")]
    NoSubmission(String),
    #[error("run {run}: {source}")]
    Team {
        run: String,
        #[source]
        source: JobError,
    },
    #[error("run {run}: voter `{voter}` is not part of its team (use --voter-file for a component file)")]
    NoVoter { run: String, voter: String },
    #[error("run {run}: task {task}: verifier {verifier}: {reason}")]
    Verifier {
        run: String,
        task: String,
        verifier: String,
        reason: String,
    },
    #[error("run {run}: task {task}: voter {voter}: {reason}")]
    Voter {
        run: String,
        task: String,
        voter: String,
        reason: String,
    },
}

/// Replays `log`'s votes; with `voter`, through that plugin instead; with
/// `verifier`, on candidates judged again by it.
pub async fn replay(
    log: &RunLog,
    runtime: Arc<PluginRuntime>,
    builtin_dir: &Path,
    voter: Option<PluginUse>,
    verifier: Option<PluginUse>,
) -> Result<ReplayReport, ReplayError> {
    let run = log
        .records
        .first()
        .map(|r| r.run.clone())
        .unwrap_or_default();
    let (_, spec_path, text, question, gold) = log
        .submitted()
        .ok_or_else(|| ReplayError::NoSubmission(run.clone()))?;
    let team_err = |source: JobError| ReplayError::Team {
        run: run.clone(),
        source,
    };
    let spec =
        TeamSpec::parse(text, Path::new(spec_path)).map_err(|e| team_err(JobError::Spec(e)))?;
    let plugins = load_plugins(&spec, &runtime, builtin_dir)
        .await
        .map_err(team_err)?;
    let final_task = spec
        .team
        .answer
        .clone()
        .or_else(|| spec.tasks.last().map(|t| t.id.clone()));
    // Per (task, round): the ballots so far. Per task: its kind and prompt.
    let mut ballots: std::collections::HashMap<(String, u32), Vec<Ballot>> = Default::default();
    let mut tasks: std::collections::HashMap<String, (AnswerKind, String)> = Default::default();
    let mut report = ReplayReport {
        run: run.clone(),
        voter: voter.as_ref().map(|v| v.name.clone()),
        verifier: verifier.as_ref().map(|v| v.name.clone()),
        votes: 0,
        changed: Vec::new(),
        answer_before: log.ended().and_then(|r| r.answer.clone()),
        answer_now: None,
        gold: gold.map(String::from),
        right_before: None,
        right_now: None,
        swapped: Vec::new(),
    };
    for (_, e) in log.events() {
        match e {
            Event::TaskStarted {
                task,
                answer_kind: k,
                prompt,
                ..
            } => {
                let kind = answer_kind(k).unwrap_or(AnswerKind::Text);
                tasks.insert(task.clone(), (kind, prompt.clone()));
            }
            Event::Ballot {
                task,
                round,
                ballot,
                ..
            } => {
                let mut b: Ballot = ballot.into();
                if let Some(v) = &verifier {
                    let t = Task {
                        replica: b.candidate.replica,
                        replicas: 1,
                        ..as_recorded(&tasks, question, &run, task, *round, v)
                    };
                    let inv = Invocation {
                        grants: v.grants,
                        ..Default::default()
                    };
                    let plugin = v.current();
                    let by = crate::team::events::Served {
                        plugin: v.name.clone(),
                        hash: plugin.hash().to_string(),
                    };
                    let verdict = runtime
                        .verify(&plugin, &inv, &t, &b.candidate)
                        .await
                        .map_err(|e| ReplayError::Verifier {
                            run: run.clone(),
                            task: task.clone(),
                            verifier: v.name.clone(),
                            reason: e.to_string(),
                        })?;
                    b.verdicts = vec![crate::team::consensus::judge::under_host_name(
                        verdict,
                        &by,
                        &plugin.id(),
                    )];
                }
                ballots.entry((task.clone(), *round)).or_default().push(b);
            }
            Event::Vote {
                task,
                round,
                ballots: n,
                voter: recorded_voter,
                decision,
                hash: recorded_hash,
                ..
            } => {
                let using = match &voter {
                    Some(v) => v.clone(),
                    None => plugins
                        .iter()
                        .find(|(name, _)| name == recorded_voter)
                        .map(|(_, p)| p.clone())
                        .ok_or_else(|| ReplayError::NoVoter {
                            run: run.clone(),
                            voter: recorded_voter.clone(),
                        })?,
                };
                let all = ballots
                    .get(&(task.clone(), *round))
                    .cloned()
                    .unwrap_or_default();
                let counted: Vec<Ballot> = all.into_iter().take(*n as usize).collect();
                let t = Task {
                    replicas: *n,
                    ..as_recorded(&tasks, question, &run, task, *round, &using)
                };
                let inv = Invocation {
                    grants: using.grants,
                    ..Default::default()
                };
                let plugin = using.current();
                if let (None, Some(recorded)) = (&voter, recorded_hash) {
                    if recorded != plugin.hash() {
                        note_swap(&mut report.swapped, &using.name, recorded, plugin.hash());
                    }
                }
                let who = format!("voter `{}` ({})", using.name, plugin.id());
                let now = runtime
                    .tally(&plugin, &inv, &t, &counted)
                    .await
                    .and_then(|d| vouch(&who, d, &counted, using.synthesises))
                    .map(|v| describe_as(&v.decision, v.synthesised))
                    .map_err(|e| ReplayError::Voter {
                        run: run.clone(),
                        task: task.clone(),
                        voter: using.name.clone(),
                        reason: e.to_string(),
                    })?;
                report.votes += 1;
                if Some(task) == final_task.as_ref() {
                    report.answer_now = now
                        .strip_prefix("decided ")
                        .and_then(|d| d.split(" (").next())
                        .map(String::from);
                }
                if now != *decision {
                    report.changed.push(Revote {
                        task: task.clone(),
                        round: *round,
                        ballots: *n,
                        recorded: decision.clone(),
                        now,
                    });
                }
            }
            _ => {}
        }
    }
    if let (Some(g), Some(t)) = (gold, &final_task) {
        let kind = match tasks.get(t).map(|(k, _)| *k) {
            Some(AnswerKind::Number) => conclave_sdk::answer::Kind::Number,
            Some(AnswerKind::Choice) => conclave_sdk::answer::Kind::Choice,
            _ => conclave_sdk::answer::Kind::Text,
        };
        let right = |a: &Option<String>| {
            Some(
                a.as_deref()
                    .is_some_and(|a| conclave_sdk::answer::same(a, g, kind)),
            )
        };
        report.right_before = right(&report.answer_before);
        report.right_now = right(&report.answer_now);
    }
    Ok(report)
}

/// Counts one more vote of `voter` recorded with `recorded` but counted
/// again with `loaded`.
fn note_swap(swapped: &mut Vec<Swapped>, voter: &str, recorded: &str, loaded: &str) {
    match swapped
        .iter_mut()
        .find(|s| s.voter == voter && s.recorded == recorded && s.loaded == loaded)
    {
        Some(s) => s.votes += 1,
        None => swapped.push(Swapped {
            voter: voter.to_string(),
            recorded: recorded.to_string(),
            loaded: loaded.to_string(),
            votes: 1,
        }),
    }
}

/// Task `task` of `run` as a plugin saw it in `round`, with `using`'s
/// config: its kind and prompt from its recorded start (the question when
/// none was recorded); replica 0 of 0 until the caller says otherwise.
fn as_recorded(
    tasks: &std::collections::HashMap<String, (AnswerKind, String)>,
    question: &str,
    run: &str,
    task: &str,
    round: u32,
    using: &PluginUse,
) -> Task {
    let (answer_kind, prompt) = tasks
        .get(task)
        .cloned()
        .unwrap_or((AnswerKind::Text, question.to_string()));
    Task {
        id: task.to_string(),
        run_id: run.to_string(),
        prompt,
        answer_kind,
        round,
        replica: 0,
        replicas: 0,
        feedback: Vec::new(),
        config: using.config.clone(),
        checker: None,
    }
}

/// A voter to re-judge with: a built-in's name (from `builtin_dir`) or a
/// component file, with `config` (JSON).
pub async fn load_voter(
    runtime: &Arc<PluginRuntime>,
    voter: &str,
    config: &str,
    builtin_dir: &Path,
) -> Result<PluginUse, String> {
    load_kind(
        runtime,
        voter,
        config,
        builtin_dir,
        crate::plugin::PluginKind::Voter,
    )
    .await
}

/// A verifier to judge the candidates again with, as [`load_voter`].
/// It is granted nothing but `log`: a replay calls no model.
pub async fn load_verifier(
    runtime: &Arc<PluginRuntime>,
    verifier: &str,
    config: &str,
    builtin_dir: &Path,
) -> Result<PluginUse, String> {
    load_kind(
        runtime,
        verifier,
        config,
        builtin_dir,
        crate::plugin::PluginKind::Verifier,
    )
    .await
}

async fn load_kind(
    runtime: &Arc<PluginRuntime>,
    voter: &str,
    config: &str,
    builtin_dir: &Path,
    kind: crate::plugin::PluginKind,
) -> Result<PluginUse, String> {
    serde_json::from_str::<serde_json::Value>(config)
        .map_err(|e| format!("the config of {voter} is not JSON: {e}"))?;
    let file = if voter.ends_with(".wasm") {
        Path::new(voter).to_path_buf()
    } else {
        builtin_dir.join(format!("{voter}.wasm"))
    };
    let plugin = runtime
        .load_file(&file)
        .await
        .map_err(|e| format!("{voter}: {e}"))?;
    if plugin.descriptor().kind != kind {
        return Err(format!(
            "{voter} is a {:?}, not a {kind:?}",
            plugin.descriptor().kind
        ));
    }
    Ok(PluginUse {
        name: plugin.name().to_string(),
        plugin: plugin.into(),
        config: config.to_string(),
        grants: crate::plugin::Grants::of(&[crate::plugin::Capability::Log]),
        limits: None,
        synthesises: false,
    })
}
