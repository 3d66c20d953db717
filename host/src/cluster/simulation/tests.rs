//! The election's simulation: seeds, replay, the model's contract and
//! the schedules it found.

use super::*;

/// Seeds every CI run covers; `conclave bench dst` runs more.
const CI_SEEDS: u64 = 300;

/// Takeover seeds every CI run covers (about 8 ms each).
const CI_TAKEOVER_SEEDS: u64 = 200;

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
        let ttl = Duration::from_secs(2);
        let lease = Server::reliable().bucket("lease", Some(ttl), Proc::steady());
        super::super::kv::contract(&lease, "coordinator", ttl)
            .await
            .unwrap();
        let registry = Server::reliable().bucket("registry", None, Proc::steady());
        super::super::kv::registry_contract(&registry)
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

#[test]
fn every_takeover_seed_ends_each_run_once_fenced_and_answers_each_client() {
    let s = takeover::sweep(0, CI_TAKEOVER_SEEDS, 2);
    assert!(
        s.requests > CI_TAKEOVER_SEEDS * 4,
        "{} requests",
        s.requests
    );
    assert!(s.runs > CI_TAKEOVER_SEEDS * 4, "{} runs journaled", s.runs);
    // Owners' runs (`run --cluster`) among them, some taken over.
    assert!(s.owned > CI_TAKEOVER_SEEDS / 2, "{} owners' runs", s.owned);
    assert!(
        s.taken_from_owners > 5,
        "{} taken from owners",
        s.taken_from_owners
    );
    let shown = s
        .failed
        .iter()
        .map(|o| format!("{}{:#?}", o.plan, o.broken));
    assert_none_broke(s.failures, &s.by_invariant, shown);
}

#[test]
fn a_takeover_seed_runs_the_same_way_every_time() {
    for seed in [5, 88] {
        let plan = takeover::Plan::from_seed(seed);
        let (a, b) = (takeover::run(&plan), takeover::run(&plan));
        assert!(!a.journal.is_empty(), "seed {seed} journaled nothing");
        // The server's log holds wall-clock stamps of registrations; the
        // journal, the answers and the roles hold none.
        assert_eq!(
            format!("{:?}", a.journal),
            format!("{:?}", b.journal),
            "seed {seed}"
        );
        assert_eq!(a.answers, b.answers, "seed {seed}");
        assert_eq!(a.roles, b.roles, "seed {seed}");
    }
}

fn plan(
    seed: u64,
    (processes, ttl, max_latency, reply_loss): (usize, u64, u64, f64),
    pauses: Vec<(usize, u64, u64)>,
    kills: Vec<(usize, u64, u64)>,
    partitions: Vec<(usize, u64, u64)>,
    requests: Vec<u64>,
) -> takeover::Plan {
    let ms = Duration::from_millis;
    let mut faults = Schedule {
        seed,
        processes,
        ttl: Duration::from_secs(ttl),
        max_latency: ms(max_latency),
        reply_loss,
        server_down: vec![],
        pauses: pauses
            .into_iter()
            .map(|(p, a, b)| (p, ms(a), ms(b)))
            .collect(),
        kills: kills
            .into_iter()
            .map(|(p, a, b)| (p, ms(a), ms(b)))
            .collect(),
        end: Duration::ZERO,
    };
    faults.end = faults.quiet_from() + faults.recovery() + faults.ttl;
    let mut plan = takeover::Plan {
        faults,
        partitions: partitions
            .into_iter()
            .map(|(p, a, b)| (p, ms(a), ms(b)))
            .collect(),
        requests: requests.into_iter().map(ms).collect(),
        owners: Vec::new(),
        end: Duration::ZERO,
    };
    plan.end = plan.quiet_from() + plan.faults.recovery() + Duration::from_secs(150);
    plan
}

/// Seed 3 of the takeover sweep, as it printed itself: p1, coordinator
/// of term 10, took run c10-3 over in the registry, but the
/// acknowledgement of that update was lost. It did not resume the run,
/// and as the run was now registered under its own term it never looked
/// at it again: journaled, registered, never ended, 175 s after the last
/// fault, and its client had been told the cluster goes on with it (the
/// stalled takeover). Fixed: a run of the coordinator's own term that is
/// not running there is resumed.
#[test]
fn a_run_taken_over_without_hearing_so_is_resumed_all_the_same() {
    let plan = plan(
        3,
        (2, 10, 0, 0.1),
        vec![
            (0, 47_679, 71_970),
            (0, 54_815, 71_948),
            (0, 19_942, 44_190),
        ],
        vec![],
        vec![(0, 13_029, 24_913), (1, 23_794, 40_326)],
        vec![
            1_915, 8_490, 14_439, 14_993, 15_276, 15_456, 17_369, 24_265, 32_964, 35_743, 40_472,
            43_691, 44_818, 51_792, 54_608, 59_919, 60_069, 63_785, 70_166, 70_673,
        ],
    );
    let o = takeover::run(&plan);
    assert!(o.held(), "{:#?}", o.broken);
    let ends = o
        .journal
        .iter()
        .filter(|r| r.run == "c10-3" && r.kind == RecordKind::Ended { decided: true })
        .count();
    assert_eq!(ends, 1, "run c10-3 decided {ends} times");
}

/// Seed 271 of the takeover sweep: p1 took run c1-0 over and read its
/// journal (a submission), and the reply to its next read was lost;
/// meanwhile p0, deposed while it was paused, woke and wrote the reply of
/// step 0. p1 then wrote after it, as if it were its own base, and made
/// that model call again: the reply of step 0 was in the run twice.
/// Fixed: a resumed run's first record expects the journal as the run
/// was read (`Journal::resume_at`), so a record written since sends the
/// resumer back to read it again.
#[test]
fn a_record_written_between_a_resumers_read_and_its_first_write_is_not_overwritten() {
    let plan = plan(
        271,
        (2, 2, 5, 0.1),
        vec![
            (0, 785, 5_303),
            (1, 525, 1_273),
            (1, 15_673, 17_881),
            (0, 12_224, 18_137),
        ],
        vec![],
        vec![(1, 14_432, 16_220), (1, 9_953, 11_745)],
        vec![
            598, 713, 1_445, 4_044, 5_090, 6_594, 9_269, 10_444, 11_617, 11_678, 15_782, 16_817,
        ],
    );
    let o = takeover::run(&plan);
    assert!(o.held(), "{:#?}", o.broken);
    let steps: Vec<&Record> = o
        .journal
        .iter()
        .filter(|r| r.run == "c1-0" && matches!(r.kind, RecordKind::Step { .. }))
        .collect();
    assert_eq!(steps.len(), 1, "{steps:#?}");
}

/// Work-queue seeds every CI run covers.
const CI_WORK_SEEDS: u64 = 200;

#[test]
fn the_work_model_keeps_the_wire_contract() {
    in_virtual_time(async {
        let server = Server::reliable();
        let names = crate::cluster::work::Names { name: "c".into() };
        let pull = server.pull(
            &names.stream(),
            &names.consumer("t"),
            &names.subject("t"),
            Duration::from_secs(1),
            3,
            Proc::steady(),
        );
        crate::cluster::wire::contract(
            &server.wire(Proc::steady()),
            &names.stream(),
            &pull,
            &names.subject("t"),
            &names.advisories(),
            Duration::from_secs(1),
            3,
        )
        .await
        .unwrap();
    });
}

#[test]
fn every_work_seed_answers_each_replica_once_without_needless_reruns() {
    let s = work::sweep(0, CI_WORK_SEEDS, 2);
    assert!(s.replicas > CI_WORK_SEEDS * 4, "{} replicas", s.replicas);
    assert!(
        s.executions > CI_WORK_SEEDS * 3,
        "{} model calls",
        s.executions
    );
    let shown = s
        .failed
        .iter()
        .map(|o| format!("{}{:#?}", o.plan, o.broken));
    assert_none_broke(s.failures, &s.by_invariant, shown);
}

#[test]
fn a_work_seed_runs_the_same_way_every_time() {
    for seed in [7, 61] {
        let plan = work::Plan::from_seed(seed);
        let (a, b) = (work::run(&plan), work::run(&plan));
        assert!(!a.executions.is_empty(), "seed {seed} ran nothing");
        assert_eq!(format!("{:?}", a.executions), format!("{:?}", b.executions));
        assert_eq!(format!("{:?}", a.ended), format!("{:?}", b.ended));
    }
}

/// The work schedules that found bugs, each before its fix: seed 19 (a
/// worker handing its result in to a paused coordinator sent no
/// progress, so the replica ran again elsewhere), 785 (a replica failed
/// during a server restart ran later on a worker that never heard of its
/// withdrawal), 36 and 232 (a replica withdrawn while being queued landed
/// on the stream and ran), 1302 (a queueing whose reply was lost landed
/// unknown to the coordinator).
#[test]
fn the_work_schedules_that_found_bugs_hold() {
    for seed in [19, 36, 232, 785, 1302] {
        let o = work::run(&work::Plan::from_seed(seed));
        assert!(o.held(), "seed {seed}: {:#?}", o.broken);
        assert!(!o.executions.is_empty(), "seed {seed} ran nothing");
    }
}

/// Fails with the invariants broken and the failing seeds' plans, shown
/// in full, unless no seed broke one.
fn assert_none_broke(
    failures: u64,
    by_invariant: &std::collections::BTreeMap<&'static str, u64>,
    shown: impl Iterator<Item = String>,
) {
    let shown: Vec<String> = shown.collect();
    assert_eq!(failures, 0, "{by_invariant:?}\n{}", shown.join("\n\n"));
}
