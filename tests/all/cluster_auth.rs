//! Cluster commands against a real nats-server that requires credentials
//! (a user and password, a token, an NKey) or TLS: without them a command
//! is refused and says which setting gives what the server wants; with
//! them the cluster works, the coordinator and a worker included.

use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Nats;
use crate::failover::Server;
use crate::journal::{command, conclave, team_file};
use crate::workers::{answer, ask, team, Worker, ACK_WAIT};

/// `conclave cluster` (connects and reads the cluster's state) with
/// `args` and `env` beside the server's address.
fn status(dir: &Path, nats: &Nats, args: &[&str], env: &[(&'static str, String)]) -> Output {
    let mut all = nats.env();
    all.extend_from_slice(env);
    let mut a = vec!["cluster"];
    a.extend_from_slice(args);
    conclave(&a, &dir.join("status"), &all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

const PASSWORD: &str = "s3cret-pass";

#[test]
fn a_server_that_requires_a_password_refuses_the_cluster_without_it_and_works_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_secured(
        dir.path(),
        &format!("authorization {{\n  users = [\n    {{ user: \"conclave\", password: \"{PASSWORD}\" }}\n  ]\n}}"),
    );
    // Without credentials: refused, and told how to give them.
    let none = status(dir.path(), &nats, &[], &[]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("requires authentication")
            && stderr(&none).contains("--cluster-user"),
        "{}",
        stderr(&none)
    );
    // A wrong password: refused as such.
    let wrong = status(
        dir.path(),
        &nats,
        &["--cluster-user", "conclave"],
        &[("CONCLAVE_CLUSTER_PASSWORD", "guess".into())],
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("refused this process's credentials"),
        "{}",
        stderr(&wrong)
    );
    // A user without a password is a usage error, named.
    let half = status(dir.path(), &nats, &["--cluster-user", "conclave"], &[]);
    assert!(!half.status.success());
    assert!(
        stderr(&half).contains("needs its password"),
        "{}",
        stderr(&half)
    );
    let right = status(
        dir.path(),
        &nats,
        &["--cluster-user", "conclave"],
        &[("CONCLAVE_CLUSTER_PASSWORD", PASSWORD.into())],
    );
    assert!(right.status.success(), "{}", stderr(&right));
    assert!(
        String::from_utf8_lossy(&right.stdout).contains("coordinator:"),
        "{:?}",
        right
    );

    // A worker without credentials stops at once and says why.
    let spec = team_file(dir.path(), &team(3));
    let mut refused = command(&["worker", &spec], &dir.path().join("refused"), &nats.env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the worker did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut said = String::new();
    refused
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("requires authentication"), "{said}");

    // With them, a coordinator and a worker run a request to its end.
    let creds = ["--cluster-user", "conclave", "--cluster-password", PASSWORD];
    let server = Server::start_with(dir.path(), "coordinator", &spec, &nats, "10s", &creds);
    server.wait_health(200, Duration::from_secs(60));
    let worker = Worker::start_args(dir.path(), "w", &spec, &nats, 3, ACK_WAIT, &creds);
    std::thread::sleep(Duration::from_millis(1500));
    let reply = answer(ask(&server, "What is 40 + 2?"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    worker.wait_for("done run");
}

#[test]
fn a_token_and_an_nkey_are_given_to_the_server_that_requires_them() {
    // A token.
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_secured(
        dir.path(),
        "authorization {\n  token: \"t0ken-for-conclave\"\n}",
    );
    let none = status(dir.path(), &nats, &[], &[]);
    assert!(
        !none.status.success() && stderr(&none).contains("CONCLAVE_CLUSTER_TOKEN"),
        "{}",
        stderr(&none)
    );
    let ok = status(
        dir.path(),
        &nats,
        &[],
        &[("CONCLAVE_CLUSTER_TOKEN", "t0ken-for-conclave".into())],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    drop(nats);

    // An NKey: the server lists the user's public key; the process signs
    // the server's nonce with the seed in its file.
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let nats = Nats::start_secured(
        dir.path(),
        &format!(
            "authorization {{\n  users = [\n    {{ nkey: \"{}\" }}\n  ]\n}}",
            user.public_key()
        ),
    );
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    let ok = status(
        dir.path(),
        &nats,
        &["--cluster-nkey", &seed.display().to_string()],
        &[],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Another user's seed is refused.
    let other = dir.path().join("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let refused = status(
        dir.path(),
        &nats,
        &["--cluster-nkey", &other.display().to_string()],
        &[],
    );
    assert!(
        !refused.status.success()
            && stderr(&refused).contains("refused this process's credentials"),
        "{}",
        stderr(&refused)
    );
    // Two ways at once is a usage error.
    let both = status(
        dir.path(),
        &nats,
        &["--cluster-nkey", &seed.display().to_string()],
        &[("CONCLAVE_CLUSTER_TOKEN", "x".into())],
    );
    assert!(
        !both.status.success() && stderr(&both).contains("not several"),
        "{}",
        stderr(&both)
    );
}

#[test]
fn a_tls_server_is_reached_with_its_ca_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    // A CA, and a certificate for 127.0.0.1 that it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "conclave test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_file = write("ca.pem", ca.pem());
    let cert_file = write("server.pem", server_cert.pem());
    let key_file = write("server-key.pem", server_key.serialize_pem());
    let nats = Nats::start_secured(
        dir.path(),
        &format!("tls {{\n  cert_file: {cert_file:?}\n  key_file: {key_file:?}\n}}"),
    );
    let without = status(dir.path(), &nats, &[], &[]);
    assert!(!without.status.success());
    assert!(
        stderr(&without).contains("--cluster-ca"),
        "{}",
        stderr(&without)
    );
    // Another CA does not vouch for the server.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = other.self_signed(&other_key).unwrap();
    let other_file = write("other-ca.pem", other.pem());
    let wrong = status(dir.path(), &nats, &["--cluster-ca", &other_file], &[]);
    assert!(!wrong.status.success(), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("TLS"), "{}", stderr(&wrong));
    let with = status(dir.path(), &nats, &["--cluster-ca", &ca_file], &[]);
    assert!(with.status.success(), "{}", stderr(&with));
    assert!(
        String::from_utf8_lossy(&with.stdout).contains("coordinator:"),
        "{with:?}"
    );
}

/// The configuration `conclave cluster --nats-permissions` prints, with
/// the two users' passwords filled in.
fn permissions(dir: &Path) -> String {
    let out = conclave(
        &["cluster", "--nats-permissions"],
        &dir.join("permissions"),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .replace("$CONCLAVE_COORDINATOR_PASSWORD", "\"coordinator-pass\"")
        .replace("$CONCLAVE_WORKER_PASSWORD", "\"worker-pass\"")
}

/// Publishes `body` on `subject` into JetStream as `user`; whether the
/// server stored it (an ack within 3 s).
async fn stored(url: &str, user: &str, password: &str, subject: &str) -> Result<(), String> {
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let ack = js
        .publish(subject.to_string(), "{}".into())
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(3), ack).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no ack within 3 s".into()),
    }
}

#[test]
fn with_the_printed_permissions_a_worker_runs_replicas_and_can_do_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_secured(dir.path(), &permissions(dir.path()));
    let url = nats.env()[0].1.clone();
    let spec = team_file(dir.path(), &team(3));
    let server = Server::start_with(
        dir.path(),
        "coordinator",
        &spec,
        &nats,
        "10s",
        &[
            "--cluster-user",
            "coordinator",
            "--cluster-password",
            "coordinator-pass",
        ],
    );
    server.wait_health(200, Duration::from_secs(60));
    let worker = Worker::start_args(
        dir.path(),
        "w",
        &spec,
        &nats,
        3,
        ACK_WAIT,
        &[
            "--cluster-user",
            "worker",
            "--cluster-password",
            "worker-pass",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    // The worker does its job under its narrow permissions.
    let reply = answer(ask(&server, "What is 40 + 2?"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    worker.wait_for("done run");
    // The operator's commands run as the coordinator.
    let st = status(
        dir.path(),
        &nats,
        &["--cluster-user", "coordinator"],
        &[("CONCLAVE_CLUSTER_PASSWORD", "coordinator-pass".into())],
    );
    assert!(st.status.success(), "{}", stderr(&st));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The coordinator may queue work (a team nobody serves, so that no
        // worker takes it): the stream takes what is published there.
        let queue = "conclave.conclave.work.nobody";
        stored(&url, "coordinator", "coordinator-pass", queue)
            .await
            .expect("the coordinator queues work");
        // The worker may not queue work, write the journal, or write the
        // lease, and the server says so rather than storing it.
        for subject in [
            queue,
            "conclave.conclave.journal.forged-run",
            "$KV.conclave-conclave-lease.holder",
            "$KV.conclave-conclave-coordinated.forged-run",
        ] {
            let got = stored(&url, "worker", "worker-pass", subject).await;
            assert!(got.is_err(), "the worker could write {subject}");
        }
        // Nor delete the journal's stream.
        let client = async_nats::ConnectOptions::with_user_and_password(
            "worker".into(),
            "worker-pass".into(),
        )
        .connect(&url)
        .await
        .unwrap();
        let js = async_nats::jetstream::new(client);
        let deleted = tokio::time::timeout(
            Duration::from_secs(3),
            js.delete_stream("CONCLAVE_CONCLAVE_JOURNAL"),
        )
        .await;
        assert!(
            !matches!(deleted, Ok(Ok(_))),
            "the worker deleted the journal"
        );
    });
    // The journal still holds the run, and the cluster still answers.
    let reply = answer(ask(&server, "What is 2 + 3?"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A NATS JWT (ed25519-nkey) of `subject`, named `name`, with `nats`
/// claims, signed by `issuer`: as an operator's tools issue them.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}-{iat}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64.encode(signature))
}

/// A user's credentials file: its JWT and its seed.
fn creds(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// Operator mode (decentralised JWT authentication): the server trusts an
/// operator, which signed an account with JetStream, which signed the
/// user whose credentials file the cluster commands are given.
#[test]
fn a_server_in_operator_mode_takes_a_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "conclave",
        serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1,
                "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1,
                "consumer": -1
            },
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2
        }),
    );
    let user_claims = serde_json::json!({
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": 2
    });
    let user_jwt = jwt(&account, &user.public_key(), "worker", user_claims.clone());
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1,
                "exports": -1, "wildcards": true, "conn": -1, "leaf": -1
            },
            "type": "account",
            "version": 2
        }),
    );
    let nats = Nats::start_secured(
        dir.path(),
        &format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{account_jwt}\"\n  {}: \"{system_jwt}\"\n}}",
            system.public_key(),
            account.public_key(),
            system.public_key()
        ),
    );
    let file = dir.path().join("user.creds");
    std::fs::write(&file, creds(&user_jwt, &user.seed().unwrap())).unwrap();
    let path = file.display().to_string();
    let ok = status(dir.path(), &nats, &["--cluster-creds", &path], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Without credentials, refused, and told why.
    let none = status(dir.path(), &nats, &[], &[]);
    assert!(!none.status.success(), "{}", stderr(&none));
    assert!(
        stderr(&none).contains("refused this process's credentials")
            || stderr(&none).contains("authorization"),
        "{}",
        stderr(&none)
    );
    // A user signed by an account the operator never signed is refused.
    let stranger = nkeys::KeyPair::new_account();
    let forged = dir.path().join("forged.creds");
    let forged_jwt = jwt(&stranger, &user.public_key(), "mallory", user_claims);
    std::fs::write(&forged, creds(&forged_jwt, &user.seed().unwrap())).unwrap();
    let refused = status(
        dir.path(),
        &nats,
        &["--cluster-creds", &forged.display().to_string()],
        &[],
    );
    assert!(!refused.status.success(), "{}", stderr(&refused));
}
