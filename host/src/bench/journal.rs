//! What the journal costs: a job of many independent tasks (5 replicas,
//! a verifier, a voter each, on a zero-latency sim node) run without a
//! journal and with one (durable at every task decision), the raw append
//! rate, and how fast the recorded run is re-judged by another voter. The
//! journal is the embedded SQLite store, or a cluster's JetStream stream.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::journal::jetstream::{ClusterConfig, JetStreamJournal};
use crate::journal::sqlite::SqliteJournal;
use crate::journal::{Entry, Journal};
use crate::plugin::{PluginRuntime, RuntimeConfig};
use crate::spec::team::TeamSpec;
use crate::team::consensus::StopReason;
use crate::team::events::{Event, Quiet};
use crate::team::job::PreparedTeam;
use crate::team::submit::Job;

/// The numbers.
#[derive(Clone, Debug, Serialize)]
pub struct JournalReport {
    /// `sqlite`, or `jetstream` and the server.
    pub store: String,
    pub tasks: usize,
    pub latency: Option<Duration>,
    pub without: Duration,
    /// With the events recorded into a journal that keeps nothing: what
    /// making and handing over the records costs, before storage.
    pub discarding: Duration,
    pub with: Duration,
    /// with / without − 1.
    pub overhead: f64,
    /// CPU time (all the process's threads, user and system; medians of
    /// the rounds) of each way: where wall time on a busy machine goes.
    pub cpu_without: Duration,
    pub cpu_discarding: Duration,
    pub cpu_with: Duration,
    /// Of `cpu_with`, the journal's writer thread (SQLite: SQL, the WAL's
    /// writes and syncs, the checkpoints).
    pub cpu_writer: Duration,
    /// SQLite only: the same job into a journal that writes its records
    /// without links (format 2, as before the hash chain), and what the
    /// chain costs: with / unchained − 1.
    pub unchained: Option<Duration>,
    pub chain_cost: Option<f64>,
    /// Reading back and verifying the chain of the append run below
    /// (`verify_records` records).
    pub verify: Duration,
    pub verify_records: usize,
    /// Records the journaled job wrote, and the syncs (commits) it took
    /// (SQLite; the server syncs a stream's writes itself).
    pub records: usize,
    pub commits: Option<u64>,
    /// Appends per second with a durable flush every `flush_every`.
    pub appends_per_second: f64,
    pub flush_every: usize,
    /// Re-judging the recorded job with another voter (`weighted`).
    pub replay: Duration,
    pub replay_votes: usize,
}

fn spec_text(tasks: usize, latency: Option<Duration>) -> String {
    let mut s = String::from(
        "[team]\nname = \"journal-bench\"\nmax_parallel_tasks = 64\n\n[[node]]\nname = \"sim\"\nbackend = \"sim\"\naccuracy = 0.8\n",
    );
    if let Some(l) = latency {
        s.push_str(&format!(
            "latency = {{ kind = \"constant\", value = \"{}\" }}\n",
            humantime::format_duration(l)
        ));
    }
    for i in 0..tasks {
        s.push_str(&format!(
            "\n[[task]]\nid = \"t{i}\"\nrole = \"solver\"\nprompt = \"What is {i} + 1?\"\nreplicas = 5\nverifiers = [\"answer-format\"]\nvoter = \"majority\"\nanswer_kind = \"number\"\n"
        ));
    }
    s
}

/// Runs the benchmark with the built-in plugins in `plugins`.
/// `latency`: the sim node's (constant) latency; none for zero. `cluster`:
/// journal on its stream instead of a SQLite file in a temporary folder.
pub async fn run(
    plugins: &Path,
    tasks: usize,
    latency: Option<Duration>,
    cluster: Option<&ClusterConfig>,
) -> Result<JournalReport, String> {
    let dir = tempfile_dir()?;
    let path = dir.join("team.toml");
    let text = spec_text(tasks, latency);
    std::fs::write(&path, &text).map_err(|e| e.to_string())?;
    let spec = TeamSpec::parse(&text, &path).map_err(|e| e.to_string())?;
    let rt = Arc::new(PluginRuntime::new(RuntimeConfig::default()).map_err(|e| e.to_string())?);
    let team = PreparedTeam::prepare(spec, rt.clone(), plugins)
        .await
        .map_err(|e| e.to_string())?;
    // Warm up, then without a journal.
    team.run("warm", "", None, Arc::new(Quiet), CancellationToken::new())
        .await;
    // Alternate the three ways, five rounds, and take each one's median:
    // a shared machine's noise hits them alike.
    // Each invocation's runs apart from any earlier one's on a cluster.
    let prefix = format!("bench-{:x}", crate::journal::now_ms());
    let (journal, sqlite, store): (Arc<dyn Journal>, Option<Arc<SqliteJournal>>, String) =
        match cluster {
            Some(c) => (
                JetStreamJournal::connect(c).map_err(|e| e.to_string())?,
                None,
                format!("jetstream {}", c.url),
            ),
            None => {
                let j = SqliteJournal::open(&dir.join("data")).map_err(|e| e.to_string())?;
                (j.clone(), Some(j), "sqlite".into())
            }
        };
    let commits_now = || sqlite.as_ref().map(|j| j.commits());
    // The baseline of the chain's cost: the same store, unchained.
    let unchained: Option<Arc<dyn Journal>> = match cluster {
        Some(_) => None,
        None => Some(
            SqliteJournal::open_unchained(&dir.join("data-unchained"))
                .map_err(|e| e.to_string())?,
        ),
    };
    let mut unchained_t = Vec::new();
    let (mut plain_t, mut discard_t, mut with_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_c, mut discard_c, mut with_c, mut writer_c) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let cpu = super::cpu_time;
    let writer = || super::thread_cpu_time("conclave-journal");
    let mut plain = None;
    let mut done = None;
    let mut commits = None;
    for round in 0..5 {
        let c0 = cpu();
        let start = Instant::now();
        let p = team
            .run(
                &format!("plain-{round}"),
                "",
                None,
                Arc::new(Quiet),
                CancellationToken::new(),
            )
            .await;
        plain_t.push(start.elapsed());
        plain_c.push(cpu().saturating_sub(c0));
        plain = Some(p);
        let c0 = cpu();
        let start = Instant::now();
        team.submit(
            &Job::new(&format!("discarding-{round}"), "", None),
            Arc::new(Discard),
            None,
            Arc::new(Quiet),
            CancellationToken::new(),
        )
        .await;
        discard_t.push(start.elapsed());
        discard_c.push(cpu().saturating_sub(c0));
        if let Some(u) = &unchained {
            let start = Instant::now();
            let d = team
                .submit(
                    &Job::new(&format!("{prefix}-unchained-{round}"), "", None),
                    u.clone(),
                    None,
                    Arc::new(Quiet),
                    CancellationToken::new(),
                )
                .await;
            unchained_t.push(start.elapsed());
            if let Some(e) = &d.journal_error {
                return Err(e.clone());
            }
        }
        let c0 = commits_now();
        let (cpu0, writer0) = (cpu(), writer());
        let start = Instant::now();
        let d = team
            .submit(
                &Job::new(&format!("{prefix}-journaled-{round}"), "", None),
                journal.clone(),
                None,
                Arc::new(Quiet),
                CancellationToken::new(),
            )
            .await;
        with_t.push(start.elapsed());
        with_c.push(cpu().saturating_sub(cpu0));
        writer_c.push(writer().saturating_sub(writer0));
        commits = commits_now().zip(c0).map(|(now, before)| now - before);
        if let Some(e) = &d.journal_error {
            return Err(e.clone());
        }
        done = Some(d);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (without, discarding, with) = (
        median(&mut plain_t),
        median(&mut discard_t),
        median(&mut with_t),
    );
    let unchained = (!unchained_t.is_empty()).then(|| median(&mut unchained_t));
    let (plain, done) = (plain.expect("ran"), done.expect("ran"));
    let decided = |r: &crate::team::job::JobResult| {
        r.tasks
            .iter()
            .filter(|(_, t)| t.stop == StopReason::Decided)
            .count()
    };
    if decided(&done.result) != decided(&plain) || decided(&plain) < tasks * 9 / 10 {
        return Err("the journaled and plain jobs did not decide alike".into());
    }
    let log = journal
        .read(&format!("{prefix}-journaled-4"))
        .map_err(|e| e.to_string())?;
    let records = log.records.len();
    // Re-judge every vote with another voter.
    let voter = crate::journal::replay::load_voter(&rt, "weighted", "{}", plugins).await?;
    let start = Instant::now();
    let report = crate::journal::replay::replay(&log, rt.clone(), plugins, Some(voter), None)
        .await
        .map_err(|e| e.to_string())?;
    let replay = start.elapsed();
    // Raw appends, durable every 64.
    let flush_every = 64;
    let n = 20_000;
    let event = Event::Retry {
        task: "t".into(),
        replica: 0,
    };
    let start = Instant::now();
    for i in 0..n {
        journal.append(
            &format!("{prefix}-appends"),
            Entry::Event {
                event: event.clone(),
            },
        );
        if (i + 1) % flush_every == 0 {
            journal.flush().await.map_err(|e| e.to_string())?;
        }
    }
    journal.flush().await.map_err(|e| e.to_string())?;
    let appends_per_second = n as f64 / start.elapsed().as_secs_f64();
    // Read back and verify that run's chain.
    let start = Instant::now();
    let appended = journal
        .read(&format!("{prefix}-appends"))
        .map_err(|e| e.to_string())?;
    let verify = start.elapsed();
    if !appended.chain.intact() || appended.records.len() != n {
        return Err(format!(
            "the append run does not verify: {} of {n} records, {}",
            appended.records.len(),
            appended.chain.summary()
        ));
    }
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(JournalReport {
        store,
        tasks,
        latency,
        without,
        discarding,
        with,
        overhead: with.as_secs_f64() / without.as_secs_f64() - 1.0,
        cpu_without: median(&mut plain_c),
        cpu_discarding: median(&mut discard_c),
        cpu_with: median(&mut with_c),
        cpu_writer: median(&mut writer_c),
        unchained,
        chain_cost: unchained.map(|u| with.as_secs_f64() / u.as_secs_f64() - 1.0),
        verify,
        verify_records: n,
        records,
        commits,
        appends_per_second,
        flush_every,
        replay,
        replay_votes: report.votes,
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let d = std::env::temp_dir().join(format!("conclave-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

/// A journal that keeps nothing.
struct Discard;

impl Journal for Discard {
    fn append(&self, _run: &str, entry: Entry) -> u64 {
        // Serialise as the real journal does, then drop.
        std::hint::black_box(serde_json::to_string(&entry).ok());
        0
    }
    fn append_event(&self, _run: &str, event: &Event) -> u64 {
        std::hint::black_box(crate::journal::encode_event(event).ok());
        0
    }
    fn flush(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<(), crate::journal::JournalError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn runs(&self) -> Result<Vec<crate::journal::RunRow>, crate::journal::JournalError> {
        Ok(Vec::new())
    }
    fn read(&self, run: &str) -> Result<crate::journal::RunLog, crate::journal::JournalError> {
        Err(crate::journal::JournalError::NoRun {
            path: "(discarded)".into(),
            run: run.into(),
        })
    }
    fn truncate(&self, _run: &str, _keep: u64) -> Result<(), crate::journal::JournalError> {
        Ok(())
    }
}
