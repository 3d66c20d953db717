//! The server's counters, in Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

    /// The text at `/metrics`; `waiting`: requests waiting for a slot now.
    pub fn render(&self, waiting: usize) -> String {
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
        s
    }
}
