//! The election's simulation: seeds, replay, the model's contract and
//! the schedules it found.

use super::*;

/// Seeds every CI run covers; `conclave bench dst` runs more.
const CI_SEEDS: u64 = 300;

#[test]
fn every_seed_keeps_one_leader_at_a_time_and_a_leader_comes_back() {
    let s = sweep(0, CI_SEEDS, 3);
    let shown: Vec<String> = s
        .failed
        .iter()
        .map(|o| format!("{}{}", o.schedule, o.broken.join("\n")))
        .collect();
    assert!(s.failed.is_empty(), "{}", shown.join("\n\n"));
}

#[test]
fn a_seed_runs_the_same_way_every_time() {
    for seed in [3, 17, 4242] {
        let schedule = Schedule::from_seed(seed);
        let (a, b) = (run(&schedule), run(&schedule));
        assert!(!a.roles.is_empty());
        assert_eq!(a.roles, b.roles, "seed {seed}");
    }
}

#[test]
fn the_model_keeps_the_contract() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Server::reliable(Duration::from_secs(2));
        super::super::kv::contract(&server, "coordinator", Duration::from_secs(2))
            .await
            .unwrap();
    });
}

/// Seed 29 of the first sweep, as it printed itself: p1 leads, stops
/// (`SIGSTOP`) a millisecond after sending a renewal, and wakes 36 s
/// later. Its renewal was acknowledged while it was stopped; it took
/// that as a renewal made now and led on for a quarter of the ttl
/// beside the process that had taken the lease meanwhile. Fixed: a
/// holder sleeps no later than its deadline and steps down when an
/// acknowledgement comes after it.
#[test]
fn a_holder_that_wakes_after_its_deadline_does_not_lead_beside_its_successor() {
    let ms = Duration::from_millis;
    let schedule = Schedule {
        seed: 29,
        processes: 3,
        ttl: Duration::from_secs(10),
        max_latency: Duration::ZERO,
        reply_loss: 0.1,
        server_down: vec![(ms(30_419), ms(34_207))],
        pauses: vec![
            (1, ms(27_319), ms(54_043)),
            (0, ms(2_643), ms(31_948)),
            (1, ms(17_895), ms(36_635)),
            (0, ms(48_493), ms(50_694)),
        ],
        kills: vec![(2, ms(55_199), ms(9_623))],
        end: ms(99_822),
    };
    let o = run(&schedule);
    assert!(
        o.roles
            .iter()
            .any(|(_, p, r)| *p == 2 && r.starts_with("Leading")),
        "p2 never took the lease: {:?}",
        o.roles
    );
    assert!(o.held(), "{}\n{:?}", o.broken.join("\n"), o.roles);
}
