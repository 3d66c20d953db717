//! `conclave serve`: teams as OpenAI-compatible models.

use super::team::open_journal;
use super::{default_plugin_dir, exit, report, runtime, ServeArgs};
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
    let teams = match conclave::server::Teams::load(&specs, rt, &default_plugin_dir()).await {
        Ok(t) => t,
        Err(e) => {
            report(&e);
            return match e {
                TeamsError::Team { source, .. }
                    if matches!(*source, JobError::Plugin { .. } | JobError::Limits { .. }) =>
                {
                    exit::BAD_PLUGIN
                }
                TeamsError::Team { .. }
                | TeamsError::Duplicate { .. }
                | TeamsError::EmptyFolder { .. } => exit::BAD_SPEC,
                TeamsError::Folder { .. } | TeamsError::None => exit::USAGE,
            };
        }
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
        "serving {} at http://{}/v1 (model {}; {} nodes); Ctrl-C or SIGTERM stops after the requests in flight",
        if names.len() == 1 { "a team".to_string() } else { format!("{} teams", names.len()) },
        server.local_addr(),
        names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
        teams.nodes(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
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
        eprintln!("shutting down: finishing the requests in flight");
        on_signal.cancel();
    });
    match server.serve(shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            report(&e);
            exit::FAILURE
        }
    }
}
