//! What each part of a cluster may do on its NATS server, as nats-server
//! configuration: an operator who hosts other people's teams gives the
//! coordinators (`serve --cluster`, and the operator's own `cluster`,
//! `runs`, `trace` commands) one user and the workers another, so that a
//! worker can take work, report progress and send results, and nothing
//! else: it cannot queue work, write or read the journal, touch the
//! coordinator lease or the registry of runs, or delete a stream.
//!
//! The subjects are the ones this build uses for a cluster of that name
//! (`conclave cluster --nats-permissions` prints them), so they cannot
//! drift from the code.

use crate::journal::jetstream::ClusterConfig;

use super::work::Names;

/// The subjects one user may publish and subscribe to.
#[derive(Clone, Debug, PartialEq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer the requests it receives (a coordinator acknowledges
    /// each worker's result on the worker's reply subject).
    pub allow_responses: bool,
}

/// What a worker needs: look up the work stream and its team's consumer
/// (made by the first worker of a team), pull and acknowledge work (and
/// report progress on it), put its heartbeat, read the coordinator's term
/// from the lease, send results, hear withdrawals, and get replies.
pub fn worker(config: &ClusterConfig) -> Permissions {
    let names = Names::of(config);
    let work = names.stream();
    let beats = names.bucket();
    let lease = format!("conclave-{}-lease", config.name);
    Permissions {
        publish: vec![
            format!("$JS.API.STREAM.INFO.{work}"),
            format!("$JS.API.CONSUMER.INFO.{work}.*"),
            format!("$JS.API.CONSUMER.CREATE.{work}.>"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{work}.*"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{work}.*"),
            format!("$JS.ACK.{work}.>"),
            format!("$JS.API.STREAM.INFO.KV_{beats}"),
            format!("$KV.{beats}.>"),
            format!("$JS.API.STREAM.INFO.KV_{lease}"),
            format!("$JS.API.DIRECT.GET.KV_{lease}.>"),
            format!("$JS.API.STREAM.MSG.GET.KV_{lease}"),
            format!("conclave.{}.results.>", config.name),
        ],
        subscribe: vec!["_INBOX.>".into(), names.cancel()],
        allow_responses: false,
    }
}

/// What a coordinator needs: everything of the cluster's own (its
/// subjects, its buckets), the JetStream API (it makes the streams and
/// buckets), the work queue's advisories, and replies.
pub fn coordinator(config: &ClusterConfig) -> Permissions {
    let name = &config.name;
    let mut publish = vec![
        "$JS.API.>".to_string(),
        "$JS.ACK.>".to_string(),
        format!("conclave.{name}.>"),
    ];
    // In name order, as the server's configuration lists them.
    let buckets = ["coordinated", "lease", "owners", "runs", "workers"];
    publish.extend(buckets.iter().map(|b| format!("$KV.conclave-{name}-{b}.>")));
    Permissions {
        publish,
        subscribe: vec![
            "_INBOX.>".into(),
            format!("conclave.{name}.>"),
            Names::of(config).advisories(),
        ],
        allow_responses: true,
    }
}

fn block(p: &Permissions) -> String {
    let list = |xs: &[String]| {
        xs.iter()
            .map(|s| format!("      \"{s}\""))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        "{{\n  publish: {{\n    allow: [\n{}\n    ]\n  }}\n  subscribe: {{\n    allow: [\n{}\n    ]\n  }}\n{}}}",
        list(&p.publish),
        list(&p.subscribe),
        if p.allow_responses {
            "  allow_responses: true\n"
        } else {
            ""
        }
    )
}

/// A nats-server configuration fragment: the two roles' permissions, and
/// an `authorization` block with a coordinator user and a worker user
/// whose passwords the server reads from its environment
/// (`CONCLAVE_COORDINATOR_PASSWORD`, `CONCLAVE_WORKER_PASSWORD`).
pub fn nats_config(config: &ClusterConfig) -> String {
    format!(
        "# Conclave cluster \"{name}\": what each role may do (conclave cluster --nats-permissions).\n\
         # Coordinators (serve --cluster) and the operator's commands use the first\n\
         # user; workers (conclave worker) the second, and may only take work, report\n\
         # progress and send results. Start a coordinator before the first worker: a\n\
         # worker cannot make the work stream or the heartbeat bucket.\n\
         conclave_coordinator = {}\n\
         conclave_worker = {}\n\
         authorization {{\n  users = [\n    {{ user: \"coordinator\", password: $CONCLAVE_COORDINATOR_PASSWORD, permissions: $conclave_coordinator }}\n    {{ user: \"worker\", password: $CONCLAVE_WORKER_PASSWORD, permissions: $conclave_worker }}\n  ]\n}}\n",
        block(&coordinator(config)),
        block(&worker(config)),
        name = config.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_may_not_queue_work_nor_write_the_journal_or_the_lease() {
        let c = ClusterConfig {
            name: "prod".into(),
            ..ClusterConfig::new("nats://x:4222")
        };
        let w = worker(&c);
        for p in &w.publish {
            assert!(!p.starts_with("conclave.prod.work"), "{p}");
            assert!(!p.starts_with("conclave.prod.journal"), "{p}");
            assert!(!p.contains("$KV.conclave-prod-lease"), "{p}");
            assert!(!p.contains("STREAM.CREATE") && !p.contains("DELETE"), "{p}");
        }
        assert!(w.publish.contains(&"conclave.prod.results.>".to_string()));
        assert!(w.subscribe.contains(&"conclave.prod.cancel".to_string()));
        let text = nats_config(&c);
        assert!(text.contains("\"$JS.ACK.CONCLAVE_PROD_WORK.>\""), "{text}");
        assert!(text.contains("$KV.conclave-prod-lease.>"), "{text}");
    }
}
