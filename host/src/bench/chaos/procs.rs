//! The processes of one chaos run: started, killed, paused, continued
//! and started again, as a supervisor would.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{health, Fault};

/// A process the benchmark starts, kills and starts again.
pub(super) struct Proc {
    pub(super) what: String,
    pub(super) args: Vec<String>,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
    /// When it was last started.
    pub(super) started: Instant,
    /// Killed on purpose (not to be started again by the supervisor).
    pub(super) down: bool,
    pub(super) paused: bool,
}

impl Proc {
    pub(super) fn start(
        &mut self,
        exe: &Path,
        env: &[(&'static str, String)],
    ) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(exe)
            .args(&self.args)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {} ({}): {e}", self.what, exe.display()))?;
        self.child = Some(child);
        self.started = Instant::now();
        self.down = false;
        self.paused = false;
        Ok(())
    }

    pub(super) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                signal(&c, "CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.down = true;
        self.paused = false;
    }

    pub(super) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Sends `SIG<sig>` to `child` (`kill -<sig>`).
pub(super) fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// Every process of one chaos run.
pub(super) struct Procs {
    pub(super) exe: PathBuf,
    pub(super) env: Vec<(&'static str, String)>,
    pub(super) nats: Proc,
    pub(super) nats_exe: PathBuf,
    pub(super) servers: Vec<Proc>,
    pub(super) ports: Vec<u16>,
    pub(super) workers: Vec<Proc>,
    pub(super) worker_args: Vec<String>,
    pub(super) dir: PathBuf,
    pub(super) exited: Vec<String>,
}

impl Procs {
    pub(super) fn start_worker(&mut self) -> Result<usize, String> {
        let i = self.workers.len();
        let mut w = Proc {
            what: format!("worker {i}"),
            args: self.worker_args.clone(),
            log: self.dir.join(format!("worker-{i}.log")),
            child: None,
            started: Instant::now(),
            down: false,
            paused: false,
        };
        w.start(&self.exe, &self.env)?;
        self.workers.push(w);
        Ok(i)
    }

    /// Starts again what exited without being killed, as a supervisor
    /// would, and notes it.
    pub(super) fn supervise(&mut self) -> Result<(), String> {
        let (exe, env) = (self.exe.clone(), self.env.clone());
        for p in self.servers.iter_mut().chain(self.workers.iter_mut()) {
            // At most once a second each, as a supervisor backs off.
            if !p.down && !p.alive() && p.started.elapsed() > Duration::from_secs(1) {
                let code = p
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                self.exited.push(format!("{} ({code})", p.what));
                p.start(&exe, &env)?;
            }
        }
        Ok(())
    }

    pub(super) fn kill_all(&mut self) {
        for p in self.servers.iter_mut().chain(self.workers.iter_mut()) {
            p.kill();
        }
        self.nats.kill();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Strikes `fault`; what it struck. A restart or a `SIGCONT` it owes is
/// spawned into `pending`.
pub(super) async fn strike(
    procs: &Arc<tokio::sync::Mutex<Procs>>,
    http: &reqwest::Client,
    fault: &Fault,
    pending: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<String, String> {
    let later = |procs: Arc<tokio::sync::Mutex<Procs>>,
                 after_ms: u64,
                 then: Box<dyn FnOnce(&mut Procs) + Send>| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            then(&mut *procs.lock().await);
        })
    };
    match fault {
        Fault::KillWorker { worker } | Fault::PauseWorker { worker, .. } => {
            let mut p = procs.lock().await;
            let n = p.workers.len();
            // The named worker, or the next one alive and running.
            let Some(i) = (0..n)
                .map(|k| (worker + k) % n)
                .find(|&i| !p.workers[i].down && !p.workers[i].paused)
            else {
                return Ok("no worker running".into());
            };
            if let Fault::PauseWorker { for_ms, .. } = fault {
                if let Some(c) = &p.workers[i].child {
                    signal(c, "STOP");
                }
                p.workers[i].paused = true;
                pending.push(later(
                    procs.clone(),
                    *for_ms,
                    Box::new(move |p| {
                        if let Some(c) = &p.workers[i].child {
                            signal(c, "CONT");
                        }
                        p.workers[i].paused = false;
                    }),
                ));
            } else {
                p.workers[i].kill();
            }
            Ok(format!("worker {i}"))
        }
        Fault::KillCoordinator { restart_after_ms } | Fault::KillStandby { restart_after_ms } => {
            let ports = procs.lock().await.ports.clone();
            let mut coordinating = None;
            for (i, port) in ports.iter().enumerate() {
                if health(http, *port).await == Some(200) {
                    coordinating = Some(i);
                    break;
                }
            }
            let i = match fault {
                Fault::KillCoordinator { .. } => coordinating.unwrap_or(0),
                _ => (coordinating.unwrap_or(0) + 1) % ports.len(),
            };
            let mut p = procs.lock().await;
            if p.servers[i].down {
                return Ok(format!("server {i} (already down)"));
            }
            p.servers[i].kill();
            pending.push(later(
                procs.clone(),
                *restart_after_ms,
                Box::new(move |p| {
                    let (exe, env) = (p.exe.clone(), p.env.clone());
                    if p.servers[i].down {
                        if let Err(e) = p.servers[i].start(&exe, &env) {
                            p.exited.push(format!("server {i} not restarted: {e}"));
                        }
                    }
                }),
            ));
            Ok(format!(
                "server {i} ({})",
                if coordinating == Some(i) {
                    "coordinating"
                } else {
                    "not coordinating"
                }
            ))
        }
        Fault::KillNats { restart_after_ms } => {
            procs.lock().await.nats.kill();
            pending.push(later(
                procs.clone(),
                *restart_after_ms,
                Box::new(|p| {
                    let exe = p.nats_exe.clone();
                    if let Err(e) = p.nats.start(&exe, &[]) {
                        p.exited.push(format!("nats-server not restarted: {e}"));
                    }
                }),
            ));
            Ok("nats-server".into())
        }
        Fault::StartWorker => {
            let i = procs.lock().await.start_worker()?;
            Ok(format!("worker {i} started"))
        }
    }
}
