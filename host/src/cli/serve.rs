//! `conclave serve`: teams as OpenAI-compatible models.

use std::sync::Arc;

use super::team::open_journal;
use super::{default_plugin_dir, exit, report, runtime, ServeArgs};
use conclave::cluster::coordinator::Coordinator;
use conclave::cluster::lease::{Election, Holder, Role};
use conclave::server::TeamsError;
use conclave::team::job::JobError;

/// `conclave serve`.
pub async fn serve(args: ServeArgs) -> u8 {
    let ServeArgs {
        specs,
        listen,
        token_env,
        max_concurrency,
        max_queue,
        max_body,
        deadline,
        no_watch,
        keep_runs,
        lease_ttl,
        advertise,
        trusted_keys,
        store,
    } = args;
    let token = match &token_env {
        Some(var) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => Some(t),
            _ => {
                eprintln!("error: --token-env names {var}, which is not set (or empty)");
                return exit::USAGE;
            }
        },
        None => None,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            report(&e);
            return exit::FAILURE;
        }
    };
    let teams = match load_teams(&specs, rt.clone(), &trusted_keys).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let journal = match open_journal(&store) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let mut config = conclave::server::ServerConfig::new(listen);
    config.token = token;
    config.max_concurrency = max_concurrency;
    config.max_queue = max_queue;
    config.max_body = max_body;
    config.deadline = deadline;
    config.runs_kept = keep_runs;
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Cluster mode: join the election; serve while coordinating.
    let mut election = None;
    if let Some(cluster) = store.cluster() {
        let me = Holder::this_process(Some(
            advertise.unwrap_or_else(|| format!("http://{listen}")),
        ));
        let joined = match Election::join(&cluster, me, lease_ttl).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: cluster {}: {e}", cluster.url);
                return exit::FAILURE;
            }
        };
        let coordinator = match Coordinator::open(
            &cluster,
            journal.clone(),
            rt,
            default_plugin_dir(),
            joined.role(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cluster {}: {e}", cluster.url);
                return exit::FAILURE;
            }
        };
        // Replicas go to `conclave worker`s while any serves the team.
        match conclave::cluster::work::WorkQueue::open(&cluster, Some(joined.role())).await {
            Ok(q) => {
                let q: Arc<dyn conclave::team::remote::RemoteReplicas> = Arc::new(q);
                teams.use_workers(q.clone());
                coordinator.use_workers(q);
            }
            Err(e) => {
                eprintln!("error: cluster {}: {e}", cluster.url);
                return exit::FAILURE;
            }
        }
        tokio::spawn(coordinator.clone().lead(shutdown.clone()));
        tokio::spawn(print_role(joined.role()));
        config.cluster = Some(coordinator);
        election = Some(joined);
    }
    let server = match conclave::server::Server::bind(teams.clone(), journal, config).await {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return exit::USAGE;
        }
    };
    // Kept alive while serving: dropping it stops watching.
    let _watch = if no_watch {
        None
    } else {
        match teams.watch(conclave::team::swap::DEFAULT_SETTLE, true) {
            Ok(w) => {
                eprintln!(
                    "watching {} team specs and {} plugin files: a changed spec or a replaced plugin is taken up for new requests (--no-watch turns this off)",
                    w.specs(),
                    w.plugin_files()
                );
                Some(w)
            }
            Err(e) => {
                report(&e);
                eprintln!("hint: serve without hot swap with --no-watch");
                return exit::FAILURE;
            }
        }
    };
    let names = teams.names();
    eprintln!(
        "{} {} at http://{}/v1 (model {}; {} nodes); Ctrl-C or SIGTERM stops after the requests in flight",
        if election.is_some() { "listening (requests are served while this server coordinates the cluster) for" } else { "serving" },
        if names.len() == 1 { "a team".to_string() } else { format!("{} teams", names.len()) },
        server.local_addr(),
        names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
        teams.nodes(),
    );
    cancel_on_signal(
        shutdown.clone(),
        "shutting down: finishing the requests in flight",
    );
    let served = server.serve(shutdown).await;
    // The lease, if held, goes to a standby at once.
    if let Some(e) = election {
        e.leave().await;
    }
    match served {
        Ok(()) => exit::OK,
        Err(e) => {
            report(&e);
            exit::FAILURE
        }
    }
}

/// Says where this server stands in its cluster as that changes: a
/// deposed coordinator stops its runs (their next coordinator resumes
/// them) and goes on as a standby.
async fn print_role(mut role: tokio::sync::watch::Receiver<Role>) {
    loop {
        let now = role.borrow_and_update().clone();
        match now {
            Role::Leading { term } => eprintln!(
                "coordinating the cluster (term {term}): serving requests and taking over the runs of earlier coordinators"
            ),
            Role::Standby { leader: Some(h) } => eprintln!(
                "standby: {} coordinates the cluster{}; requests here are answered 503 until this server takes over",
                h.id,
                h.http.map(|u| format!(" at {u}")).unwrap_or_default()
            ),
            Role::Standby { leader: None } => {
                eprintln!("standby: waiting for the coordinator lease")
            }
            Role::Deposed { term, why } => {
                eprintln!(
                    "error: this server lost the coordinator lease of term {term} ({why}): it stopped its runs, which the next coordinator resumes, and rejoins the cluster as a standby"
                );
            }
        }
        if role.changed().await.is_err() {
            return;
        }
    }
}

/// `conclave cluster`.
pub async fn cluster(json: bool, nats_permissions: bool, store: &super::StoreArgs) -> u8 {
    if nats_permissions {
        let config = conclave::journal::jetstream::ClusterConfig {
            name: store.cluster_name.clone(),
            ..conclave::journal::jetstream::ClusterConfig::new("")
        };
        print!("{}", conclave::cluster::permissions::nats_config(&config));
        return exit::OK;
    }
    let Some(cluster) = store.cluster() else {
        eprintln!("error: conclave cluster needs --cluster URL (or $CONCLAVE_CLUSTER)");
        return exit::USAGE;
    };
    let status = match conclave::cluster::status(&cluster).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cluster {}: {e}", cluster.url);
            return exit::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("serialisable")
        );
        return exit::OK;
    }
    match &status.coordinator {
        Some(h) => println!(
            "coordinator: {}{}{}",
            h.id,
            status
                .term
                .map(|t| format!(", term {t}"))
                .unwrap_or_default(),
            h.http
                .as_deref()
                .map(|u| format!(", serving at {u}"))
                .unwrap_or_default()
        ),
        None => println!("coordinator: none holds the lease now"),
    }
    if let Some(ttl) = status.lease_ttl {
        println!("lease TTL:   {}", humantime::format_duration(ttl));
    }
    println!(
        "runs in progress under a coordinator: {}",
        status.runs.len()
    );
    for (run, term) in &status.runs {
        println!("  {run}  (term {term})");
    }
    println!("workers: {}", status.workers.len());
    for w in &status.workers {
        println!(
            "  {}  teams {}; {} of {} running, {} done{}",
            w.id,
            w.teams.join(", "),
            w.inflight,
            w.max_inflight,
            w.done,
            if w.tags.is_empty() {
                String::new()
            } else {
                format!("; tags {}", w.tags.join(", "))
            }
        );
    }
    exit::OK
}

/// Cancels `token` on Ctrl-C or SIGTERM (from a service manager), saying
/// `what` happens then.
pub(super) fn cancel_on_signal(token: tokio_util::sync::CancellationToken, what: &'static str) {
    let on_signal = token;
    tokio::spawn(async move {
        // Ctrl-C, or SIGTERM from a service manager.
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("{what}");
        on_signal.cancel();
    });
}

/// Loads the team specs (files or folders) `specs`; on failure, reports
/// it and gives the exit code (3 bad spec, 5 bad plugin, 2 usage).
pub(super) async fn load_teams(
    specs: &[std::path::PathBuf],
    rt: Arc<conclave::PluginRuntime>,
    trusted_keys: &[String],
) -> Result<Arc<conclave::server::Teams>, u8> {
    let mut keys = Vec::new();
    for k in trusted_keys {
        match conclave::plugin::signature::PublicKey::from_arg(k) {
            Ok(key) => keys.push(key),
            Err(e) => {
                eprintln!("error: --trusted-key {e}");
                return Err(exit::USAGE);
            }
        }
    }
    conclave::server::Teams::load_trusting(specs, rt, &default_plugin_dir(), keys)
        .await
        .map_err(|e| {
            report(&e);
            match e {
                TeamsError::Team { source, .. }
                    if matches!(*source, JobError::Plugin { .. } | JobError::Limits { .. }) =>
                {
                    exit::BAD_PLUGIN
                }
                TeamsError::Team { .. }
                | TeamsError::Duplicate { .. }
                | TeamsError::EmptyFolder { .. } => exit::BAD_SPEC,
                TeamsError::Folder { .. } | TeamsError::None => exit::USAGE,
            }
        })
}
