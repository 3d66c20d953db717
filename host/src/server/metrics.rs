//! The server's counters, in Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::plugin::RuntimeLoad;
use crate::team::job::JobResult;

#[derive(Default)]
struct Counts {
    requests: BTreeMap<String, u64>,
    in_flight: i64,
    runs: BTreeMap<String, u64>,
    tokens_in: u64,
    tokens_out: u64,
    seconds: f64,
}

/// Requests by status, runs in flight, runs by stop reason, tokens, time.
#[derive(Default)]
pub struct Metrics(Mutex<Counts>);

impl Metrics {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn request(&self, status: &str) {
        *self.counts().requests.entry(status.into()).or_default() += 1;
    }

    pub fn in_flight(&self, delta: i64) {
        self.counts().in_flight += delta;
    }

    /// The mean wall time of the runs finished so far (0 before any).
    pub fn mean_run_seconds(&self) -> f64 {
        let c = self.counts();
        let runs: u64 = c.runs.values().sum();
        if runs == 0 {
            0.0
        } else {
            c.seconds / runs as f64
        }
    }

    pub fn finished(&self, r: &JobResult) {
        let mut c = self.counts();
        let stop = serde_json::to_value(&r.stop)
            .ok()
            .and_then(|v| v["stop"].as_str().map(String::from))
            .unwrap_or_default();
        *c.runs.entry(stop).or_default() += 1;
        c.tokens_in += r.tokens_in;
        c.tokens_out += r.tokens_out;
        c.seconds += r.wall.as_secs_f64();
    }

    /// The text at `/metrics`; `waiting`: requests waiting for a slot now;
    /// `load`: what the plugin runtime is doing.
    pub fn render(&self, waiting: usize, load: &RuntimeLoad) -> String {
        let c = self.counts();
        let mut s = String::new();
        s.push_str("# HELP conclave_requests_total Chat completion requests by HTTP status.\n# TYPE conclave_requests_total counter\n");
        for (k, v) in &c.requests {
            s.push_str(&format!("conclave_requests_total{{status=\"{k}\"}} {v}\n"));
        }
        s.push_str("# HELP conclave_runs_in_flight Team runs going on.\n# TYPE conclave_runs_in_flight gauge\n");
        s.push_str(&format!("conclave_runs_in_flight {}\n", c.in_flight));
        s.push_str("# HELP conclave_requests_waiting Requests waiting for a slot.\n# TYPE conclave_requests_waiting gauge\n");
        s.push_str(&format!("conclave_requests_waiting {waiting}\n"));
        s.push_str("# HELP conclave_runs_total Finished runs by stop reason.\n# TYPE conclave_runs_total counter\n");
        for (k, v) in &c.runs {
            s.push_str(&format!("conclave_runs_total{{stop=\"{k}\"}} {v}\n"));
        }
        s.push_str("# HELP conclave_tokens_total Model tokens by direction.\n# TYPE conclave_tokens_total counter\n");
        s.push_str(&format!(
            "conclave_tokens_total{{direction=\"in\"}} {}\n",
            c.tokens_in
        ));
        s.push_str(&format!(
            "conclave_tokens_total{{direction=\"out\"}} {}\n",
            c.tokens_out
        ));
        s.push_str("# HELP conclave_run_seconds_total Wall time of finished runs.\n# TYPE conclave_run_seconds_total counter\n");
        s.push_str(&format!("conclave_run_seconds_total {:.6}\n", c.seconds));
        let gauges = [
            (
                "conclave_replicas_in_flight",
                "Replicas (role calls) in flight: running or waiting on a model.",
                load.replicas,
            ),
            (
                "conclave_replicas_max",
                "The most replicas in flight at once (--max-replicas).",
                load.max_replicas,
            ),
            (
                "conclave_replicas_waiting_for_admission",
                "Replicas waiting for admission past --max-replicas.",
                load.waiting_for_admission,
            ),
            (
                "conclave_replicas_waiting_on_model",
                "Role and verifier calls waiting on a model call, holding no plugin instance.",
                load.waiting_on_model,
            ),
            (
                "conclave_plugin_instances_running",
                "Plugin instance slots in use: calls computing now.",
                load.running,
            ),
            (
                "conclave_plugin_instance_slots",
                "Plugin instance slots there are.",
                load.slots,
            ),
        ];
        for (name, help, v) in gauges {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        }
        s.push_str("# HELP conclave_plugin_steps_total Plugin guest calls begun (a durable call takes one more per model call).\n# TYPE conclave_plugin_steps_total counter\n");
        s.push_str(&format!("conclave_plugin_steps_total {}\n", load.steps));
        s
    }
}
