//! How a process proves who it is to the cluster's NATS server, and how it
//! checks the server's certificate: every connection of every cluster
//! command (`serve`, `worker`, `run`, `resume`, `runs`, `trace`, `cluster`,
//! the benchmarks) is made by [`ClusterConfig::connect`] with these
//! settings.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ConnectErrorKind;

use super::ClusterConfig;

/// How long connecting may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Credentials and TLS settings for the NATS server. At most one way of
/// authenticating is used: a credentials file, an NKey seed, a user and
/// password, or a token (checked in that order by [`ClusterAuth::check`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterAuth {
    /// A credentials file (a user JWT and its NKey seed, as `nsc` writes
    /// it), for a server in operator mode.
    pub creds: Option<PathBuf>,
    /// A file holding an NKey seed (`SU...`), for a server that lists the
    /// user's public NKey.
    pub nkey_seed: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// The CA (PEM) that signed the server's certificate; with it, the
    /// connection must be TLS.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for a server that verifies
    /// its clients' certificates.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClusterAuth {
    /// The settings, checked: one way of authenticating at most, a
    /// password only with a user, a certificate only with its key, and
    /// every file readable. The error names the setting.
    pub fn check(&self) -> Result<(), String> {
        let ways = [
            self.creds.is_some(),
            self.nkey_seed.is_some(),
            self.user.is_some(),
            self.token.is_some(),
        ]
        .iter()
        .filter(|w| **w)
        .count();
        if ways > 1 {
            return Err(
                "give one way of authenticating to the cluster's NATS server: a credentials file (--cluster-creds), an NKey seed (--cluster-nkey), a user and password (--cluster-user, CONCLAVE_CLUSTER_PASSWORD) or a token (CONCLAVE_CLUSTER_TOKEN), not several"
                    .into(),
            );
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(
                "a password for the cluster's NATS server needs its user (--cluster-user)".into(),
            );
        }
        if self.user.is_some() && self.password.is_none() {
            return Err(format!(
                "the user {:?} of the cluster's NATS server needs its password (CONCLAVE_CLUSTER_PASSWORD)",
                self.user.as_deref().unwrap_or_default()
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("a client certificate for the cluster's NATS server needs both --cluster-cert and --cluster-key".into());
        }
        for (flag, path) in [
            ("--cluster-creds", &self.creds),
            ("--cluster-nkey", &self.nkey_seed),
            ("--cluster-ca", &self.ca),
            ("--cluster-cert", &self.cert),
            ("--cluster-key", &self.key),
        ] {
            if let Some(p) = path {
                std::fs::metadata(p).map_err(|e| format!("{flag} {}: {e}", p.display()))?;
            }
        }
        Ok(())
    }

    /// Whether any credential is given (for what a refusal says).
    fn any(&self) -> bool {
        self.creds.is_some()
            || self.nkey_seed.is_some()
            || self.user.is_some()
            || self.token.is_some()
    }
}

impl ClusterConfig {
    /// A client of the cluster's NATS server, named `conclave {what}`,
    /// with this config's credentials and TLS settings. The error says
    /// what the server refused and which setting gives what it wants.
    pub(crate) async fn connect(&self, what: &str) -> Result<async_nats::Client, String> {
        let auth = &self.auth;
        auth.check()?;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("conclave {what}"))
            .connection_timeout(CONNECT_TIMEOUT);
        if let Some(path) = &auth.creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("--cluster-creds {}: {e}", path.display()))?;
        }
        if let Some(path) = &auth.nkey_seed {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("--cluster-nkey {}: {e}", path.display()))?;
            let seed = seed
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with('S') && !l.is_empty())
                .ok_or_else(|| {
                    format!(
                        "--cluster-nkey {}: no NKey seed in the file (a line starting with S, as `nk -gen user` writes)",
                        path.display()
                    )
                })?;
            options = options.nkey(seed.to_string());
        }
        if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &auth.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &auth.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&auth.cert, &auth.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
            .connect(self.url.as_str())
            .await
            .map_err(|e| self.refused(&e))
    }

    /// The environment that gives a child process (`conclave serve` or
    /// `worker` started by a benchmark) this cluster, its credentials and
    /// TLS settings: secrets go in the environment, not on its command
    /// line.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("CONCLAVE_CLUSTER", Some(self.url.clone())),
            ("CONCLAVE_CLUSTER_NAME", Some(self.name.clone())),
            ("CONCLAVE_CLUSTER_MONITOR", self.monitor.clone()),
            ("CONCLAVE_CLUSTER_CREDS", path(&self.auth.creds)),
            ("CONCLAVE_CLUSTER_NKEY", path(&self.auth.nkey_seed)),
            ("CONCLAVE_CLUSTER_USER", self.auth.user.clone()),
            ("CONCLAVE_CLUSTER_PASSWORD", self.auth.password.clone()),
            ("CONCLAVE_CLUSTER_TOKEN", self.auth.token.clone()),
            ("CONCLAVE_CLUSTER_CA", path(&self.auth.ca)),
            ("CONCLAVE_CLUSTER_CERT", path(&self.auth.cert)),
            ("CONCLAVE_CLUSTER_KEY", path(&self.auth.key)),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// What a failed connection says (the caller names the server).
    fn refused(&self, e: &async_nats::ConnectError) -> String {
        let text = e.to_string();
        let tls = e.kind() == ConnectErrorKind::Tls
            || text.contains("certificate")
            || text.contains("TLS")
            || text.contains("tls");
        match e.kind() {
            ConnectErrorKind::AuthorizationViolation if self.auth.any() => format!(
                "the server refused this process's credentials ({e}): check them, and that the server's configuration lists this user"
            ),
            ConnectErrorKind::AuthorizationViolation => format!(
                "the server requires authentication ({e}): give a credentials file (--cluster-creds), an NKey seed (--cluster-nkey), a user (--cluster-user, with CONCLAVE_CLUSTER_PASSWORD) or a token (CONCLAVE_CLUSTER_TOKEN)"
            ),
            _ if tls && self.auth.ca.is_none() => format!(
                "TLS failed ({e}): give the CA that signed the server's certificate with --cluster-ca"
            ),
            _ if tls => format!(
                "TLS failed ({e}): the server's certificate is not signed by the CA of --cluster-ca, or does not name the host of --cluster"
            ),
            _ => format!("cannot connect: {e}"),
        }
    }
}
