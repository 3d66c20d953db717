//! Budgets: limits on tokens, cost and wall time, for a job and for each of
//! its tasks, and the meters that charge model calls against them.
//!
//! A task's meter charges its job's meter too, so a job limit holds across
//! tasks running in parallel. Every model call is admitted first: once a
//! meter has seen a call, it refuses one that, at the average cost of a call
//! so far, would take the calls in flight past a limit. So only the first
//! calls, made before any cost is known, can overshoot. A call budget
//! counts calls as they are admitted, whether they then succeed or not, so
//! it holds exactly. Samples and rounds are counted by the consensus loop
//! itself (`TaskSpec`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Prompt plus completion tokens.
    pub max_tokens: Option<u64>,
    /// In the nodes' price unit (`price_in`/`price_out` per million tokens).
    pub max_cost: Option<f64>,
    /// Wall-clock time from the start.
    pub max_wall: Option<Duration>,
    /// Model calls admitted (a refused or failed call counts: it cost the
    /// host a trip to the router).
    #[serde(default)]
    pub max_calls: Option<u64>,
}

#[derive(Default)]
struct Spent {
    tokens: u64,
    cost: f64,
    calls: u64,
    in_flight: u64,
    /// Calls let through by [`Meter::admit`], whatever became of them.
    admitted: u64,
}

/// A model call let through by [`Meter::admit`]; dropping it (after
/// [`Meter::charge`], or when the call is abandoned) frees its place.
pub struct Admission {
    meter: Arc<Meter>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut m: Option<&Meter> = Some(&self.meter);
        while let Some(x) = m {
            let mut s = x.spent();
            s.in_flight = s.in_flight.saturating_sub(1);
            drop(s);
            m = x.parent.as_deref();
        }
    }
}

/// Charges calls against [`Limits`] and, through its parent, against the
/// job's.
pub struct Meter {
    /// `job` or `task X`: named in the reason a budget ran out.
    scope: String,
    limits: Limits,
    start: Instant,
    spent: Mutex<Spent>,
    parent: Option<Arc<Meter>>,
}

impl Meter {
    /// A meter for a job.
    pub fn job(limits: Limits) -> Arc<Self> {
        Arc::new(Meter {
            scope: "job".into(),
            limits,
            start: Instant::now(),
            spent: Mutex::default(),
            parent: None,
        })
    }

    /// A meter for task `id` that also charges `self`.
    pub fn task(self: &Arc<Self>, id: &str, limits: Limits) -> Arc<Self> {
        Arc::new(Meter {
            scope: format!("task {id}"),
            limits,
            start: Instant::now(),
            spent: Mutex::default(),
            parent: Some(self.clone()),
        })
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets one more model call through, or says which budget it would
    /// pass. The call takes its place first and gives it back if it does
    /// not fit, so that calls admitted at the same moment on other threads
    /// (other tasks of the job) cannot together pass a call budget.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, String> {
        let mut m: Option<&Meter> = Some(self);
        while let Some(x) = m {
            let mut s = x.spent();
            s.in_flight += 1;
            s.admitted += 1;
            drop(s);
            m = x.parent.as_deref();
        }
        let admission = Admission {
            meter: self.clone(),
        };
        match self.over(0) {
            None => Ok(admission),
            Some(why) => {
                let mut m: Option<&Meter> = Some(self);
                while let Some(x) = m {
                    x.spent().admitted -= 1;
                    m = x.parent.as_deref();
                }
                // Dropping the admission gives back its place in flight.
                Err(why)
            }
        }
    }

    /// Charges one model call here and in the parents.
    pub fn charge(&self, tokens: u64, cost: f64) {
        {
            let mut s = self.spent();
            s.tokens += tokens;
            s.cost += cost;
            s.calls += 1;
        }
        if let Some(p) = &self.parent {
            p.charge(tokens, cost);
        }
    }

    /// Tokens and cost charged here.
    pub fn used(&self) -> (u64, f64) {
        let s = self.spent();
        (s.tokens, s.cost)
    }

    /// Which budget is spent, if any, here or in a parent: no further
    /// call fits. The reason a run stops, naming the scope, the limit and
    /// what was used.
    pub fn exhausted(&self) -> Option<String> {
        self.over(1)
    }

    /// How many more calls fit beside those in flight, at the average cost
    /// so far, here and in the parents; `None` when nothing limits them
    /// (no token or cost limit, or no call seen yet).
    pub fn room(&self) -> Option<u64> {
        let (tokens, cost, calls, flying, admitted) = {
            let s = self.spent();
            (s.tokens, s.cost, s.calls, s.in_flight, s.admitted)
        };
        let mut room: Option<u64> = self.limits.max_calls.map(|m| m.saturating_sub(admitted));
        if calls > 0 {
            let fits = |left: f64, per_call: f64| {
                if per_call <= 0.0 {
                    u64::MAX
                } else {
                    ((left / per_call).floor().max(0.0) as u64).saturating_sub(flying)
                }
            };
            if let Some(m) = self.limits.max_tokens {
                let n = fits(m as f64 - tokens as f64, tokens as f64 / calls as f64);
                room = Some(room.map_or(n, |r| r.min(n)));
            }
            if let Some(m) = self.limits.max_cost {
                let n = fits(m - cost, cost / calls as f64);
                room = Some(room.map_or(n, |r| r.min(n)));
            }
        }
        match (room, self.parent.as_ref().and_then(|p| p.room())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Which budget `more` calls beyond those in flight would pass.
    fn over(&self, more: u64) -> Option<String> {
        let (tokens, cost, calls, flying, admitted) = {
            let s = self.spent();
            (s.tokens, s.cost, s.calls, s.in_flight, s.admitted)
        };
        if let Some(m) = self.limits.max_calls.filter(|m| admitted + more > *m) {
            // The calls made besides the one asking (admitted already, from
            // `admit`, or the next one, from `exhausted`).
            let made = (admitted + more).saturating_sub(1);
            return Some(format!(
                "{}: call budget of {m} spent ({made} model calls)",
                self.scope
            ));
        }
        // What the calls in flight and `more` will cost, at the average so
        // far (nothing is known before the first call).
        let ahead = (flying + more) as f64 / calls.max(1) as f64 * (calls > 0) as u64 as f64;
        if let Some(m) = self.limits.max_tokens {
            if tokens as f64 + ahead * tokens as f64 > m as f64 {
                let why = if tokens >= m {
                    format!("{tokens} used")
                } else {
                    format!(
                        "{tokens} used; a call takes about {}",
                        tokens / calls.max(1)
                    )
                };
                return Some(format!("{}: token budget of {m} spent ({why})", self.scope));
            }
        }
        if let Some(m) = self.limits.max_cost {
            if cost + ahead * cost > m {
                return Some(format!(
                    "{}: cost budget of {m} spent ({cost:.6} used)",
                    self.scope
                ));
            }
        }
        if let Some(m) = self.limits.max_wall.filter(|m| self.start.elapsed() >= *m) {
            return Some(self.wall_reason(m));
        }
        self.parent.as_ref().and_then(|p| p.over(more))
    }

    fn wall_reason(&self, limit: Duration) -> String {
        format!(
            "{}: wall-time budget of {} spent",
            self.scope,
            humantime::format_duration(limit)
        )
    }

    /// The earliest wall-time deadline here or in a parent, with the reason
    /// to give when it passes.
    pub fn deadline(&self) -> Option<(Instant, String)> {
        let own = self
            .limits
            .max_wall
            .map(|m| (self.start + m, self.wall_reason(m)));
        let parent = self.parent.as_ref().and_then(|p| p.deadline());
        match (own, parent) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_charges_its_job_and_either_limit_stops_it() {
        let job = Meter::job(Limits {
            max_tokens: Some(100),
            ..Default::default()
        });
        let a = job.task(
            "a",
            Limits {
                max_tokens: Some(60),
                ..Default::default()
            },
        );
        let b = job.task("b", Limits::default());
        a.charge(20, 0.0);
        assert_eq!(a.exhausted(), None);
        b.charge(20, 0.0);
        assert_eq!(job.used().0, 40);
        a.charge(20, 0.0);
        // 40 used, 20 a call: one more exactly reaches the task's 60.
        assert_eq!(a.exhausted(), None);
        a.charge(20, 0.0);
        assert_eq!(
            a.exhausted().as_deref(),
            Some("task a: token budget of 60 spent (60 used)")
        );
        b.charge(10, 0.0);
        // 90 used over 5 calls: the next one (about 18) would pass 100.
        assert_eq!(
            b.exhausted().as_deref(),
            Some("job: token budget of 100 spent (90 used; a call takes about 18)")
        );
    }

    #[test]
    fn calls_in_flight_are_reserved_at_the_average_cost() {
        let job = Meter::job(Limits {
            max_tokens: Some(100),
            ..Default::default()
        });
        // Nothing known yet: the first calls all go through.
        let first: Vec<_> = (0..3).map(|_| job.admit().unwrap()).collect();
        for _ in &first {
            job.charge(25, 0.0);
        }
        drop(first);
        // 75 used, 25 a call: one more fits, a second in flight does not.
        let one = job.admit().unwrap();
        let e = job.admit().err().unwrap();
        assert!(
            e.starts_with("job: token budget of 100 spent (75 used"),
            "{e}"
        );
        assert_eq!(job.room(), Some(0));
        drop(one);
        assert_eq!(job.room(), Some(1));
        assert!(job.admit().is_ok(), "a place frees when a call ends");
    }

    #[test]
    fn a_call_budget_counts_admissions_here_and_in_the_job() {
        let job = Meter::job(Limits {
            max_calls: Some(5),
            ..Default::default()
        });
        let t = job.task(
            "t",
            Limits {
                max_calls: Some(3),
                ..Default::default()
            },
        );
        assert_eq!(t.room(), Some(3));
        // Admitted and dropped without a charge (a failed call): counted.
        for _ in 0..3 {
            drop(t.admit().unwrap());
        }
        assert_eq!(
            t.admit().err().as_deref(),
            Some("task t: call budget of 3 spent (3 model calls)")
        );
        assert_eq!(t.exhausted(), t.admit().err());
        let u = job.task("u", Limits::default());
        let _two = (u.admit().unwrap(), u.admit().unwrap());
        assert_eq!(
            u.admit().err().as_deref(),
            Some("job: call budget of 5 spent (5 model calls)")
        );
    }

    #[test]
    fn cost_budgets_count_fractions() {
        let job = Meter::job(Limits {
            max_cost: Some(0.01),
            ..Default::default()
        });
        job.charge(1, 0.003);
        job.charge(1, 0.003);
        assert_eq!(job.exhausted(), None, "0.006 used, one more call fits");
        job.charge(1, 0.003);
        assert!(job
            .exhausted()
            .unwrap()
            .starts_with("job: cost budget of 0.01"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_nearest_wall_deadline_wins() {
        let job = Meter::job(Limits {
            max_wall: Some(Duration::from_secs(10)),
            ..Default::default()
        });
        let t = job.task(
            "t",
            Limits {
                max_wall: Some(Duration::from_secs(3)),
                ..Default::default()
            },
        );
        let (at, why) = t.deadline().unwrap();
        assert_eq!(at - Instant::now(), Duration::from_secs(3));
        assert_eq!(why, "task t: wall-time budget of 3s spent");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            t.exhausted().as_deref(),
            Some("task t: wall-time budget of 3s spent")
        );
        assert_eq!(job.exhausted(), None);
    }
}
