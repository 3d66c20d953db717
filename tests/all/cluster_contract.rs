//! One contract, two implementations: the key-value operations the
//! coordinator lease and the registry rely on (`conclave::cluster::kv::contract`, `registry_contract`) hold on
//! a real nats-server, as they do on the simulation's model of it (the
//! same function runs there, in `cluster::simulation`'s tests). If the
//! model drifts from the server it stands for, one of the two fails.

use std::time::Duration;

use crate::cluster::Nats;

/// Runs `f` with a JetStream context on a real nats-server of its own.
fn on_nats<F: std::future::Future<Output = ()>>(
    f: impl FnOnce(async_nats::jetstream::Context) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        f(async_nats::jetstream::new(client)).await
    });
}

#[test]
fn the_lease_buckets_contract_holds_on_a_real_nats_server() {
    on_nats(|js| async move {
        // As the lease makes its bucket: one value per key, expiring.
        let ttl = Duration::from_secs(2);
        let store = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "contract-lease".into(),
                history: 1,
                max_age: ttl,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        conclave::cluster::kv::contract(&store, "coordinator", ttl)
            .await
            .unwrap();
    });
}

#[test]
fn the_registry_buckets_contract_holds_on_a_real_nats_server() {
    on_nats(|js| async move {
        // As the coordinator makes its registry: one value per key, kept.
        let store = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "contract-registry".into(),
                history: 1,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        conclave::cluster::kv::registry_contract(&store)
            .await
            .unwrap();
    });
}

#[test]
fn the_work_queues_contract_holds_on_a_real_nats_server() {
    use conclave::cluster::work::{self, Names, WorkSettings};
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), true);
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        // The stream and the consumer as the coordinator and the workers
        // make them.
        let config = conclave::journal::jetstream::ClusterConfig::new(&url);
        let names = Names::of(&config);
        let stream = work::stream(&js, &names, &config).await.unwrap();
        let settings = WorkSettings {
            ack_wait: Duration::from_secs(1),
            max_deliver: 3,
        };
        let pull = work::consumer(&stream, &names, "t", settings)
            .await
            .unwrap();
        let wire = conclave::cluster::wire::Nats { client, js };
        conclave::cluster::wire::contract(
            &wire,
            &names.stream(),
            &pull,
            &names.subject("t"),
            &names.advisories(),
            settings.ack_wait,
            3,
        )
        .await
        .unwrap();
    });
}
