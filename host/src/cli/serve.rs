//! `conclave serve`: a team as an OpenAI-compatible model.

use std::sync::Arc;

use super::team::{load_team, open_journal};
use super::{exit, report, ServeArgs};

/// `conclave serve`.
pub async fn serve(args: ServeArgs) -> u8 {
    let ServeArgs {
        spec,
        listen,
        token_env,
        max_concurrency,
        max_queue,
        max_body,
        deadline,
        no_watch,
        data_dir,
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
    let team = match load_team(&spec, None).await {
        Ok(t) => Arc::new(t),
        Err(code) => return code,
    };
    let journal = match open_journal(data_dir.as_deref()) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let mut config = conclave::server::ServerConfig::new(listen);
    config.token = token;
    config.max_concurrency = max_concurrency;
    config.max_queue = max_queue;
    config.max_body = max_body;
    config.deadline = deadline;
    let server = match conclave::server::Server::bind(team.clone(), journal, config).await {
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
        match team.watch(conclave::team::swap::DEFAULT_SETTLE) {
            Ok(w) => {
                eprintln!(
                    "watching {} plugin files in {} folders: a replaced file is swapped in for new calls (--no-watch turns this off)",
                    w.files(),
                    w.dirs().len()
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
    let name = team.spec().team.name.clone();
    eprintln!(
        "serving team {name:?} at http://{}/v1 (model {name:?}); Ctrl-C or SIGTERM stops after the requests in flight",
        server.local_addr()
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
