//! Latency distributions for the simulator: constant, log-normal, or
//! empirical (resampled from measured latencies in a CSV such as the paper's
//! `llm_call_latencies.csv`, columns `model,latency_s`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Deserialize;

/// How a sim node's latency is specified in a team spec.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LatencySpec {
    /// Always the same.
    Constant {
        #[serde(with = "humantime_serde")]
        value: Duration,
    },
    /// exp(N(ln median, sigma²)).
    Lognormal {
        #[serde(with = "humantime_serde")]
        median: Duration,
        sigma: f64,
    },
    /// Resampled from the `latency_s` column of the rows of `csv` whose
    /// `model` column contains `model`.
    Empirical {
        csv: std::path::PathBuf,
        model: String,
        /// Multiplies every latency (default 1).
        #[serde(default = "one")]
        scale: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl Default for LatencySpec {
    fn default() -> Self {
        LatencySpec::Constant {
            value: Duration::ZERO,
        }
    }
}

/// A distribution ready to sample.
#[derive(Clone, Debug)]
pub enum Latency {
    Constant(Duration),
    LogNormal { mu: f64, sigma: f64 },
    Empirical(Arc<Vec<Duration>>),
}

impl Latency {
    /// Builds the distribution; relative CSV paths are resolved against
    /// `base` (the team spec's folder).
    pub fn from_spec(spec: &LatencySpec, base: &Path) -> Result<Self, String> {
        Ok(match spec {
            LatencySpec::Constant { value } => Latency::Constant(*value),
            LatencySpec::Lognormal { median, sigma } => {
                if !(sigma.is_finite() && *sigma >= 0.0) {
                    return Err(format!("sigma must be a non-negative number, got {sigma}"));
                }
                if median.is_zero() {
                    return Err("median must be above zero".into());
                }
                Latency::LogNormal {
                    mu: median.as_secs_f64().ln(),
                    sigma: *sigma,
                }
            }
            LatencySpec::Empirical { csv, model, scale } => {
                let path = if csv.is_absolute() {
                    csv.clone()
                } else {
                    base.join(csv)
                };
                let mut v = load_csv(&path, model)?;
                if *scale != 1.0 {
                    v.iter_mut().for_each(|d| *d = d.mul_f64(*scale));
                }
                Latency::Empirical(Arc::new(v))
            }
        })
    }

    /// One latency.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match self {
            Latency::Constant(d) => *d,
            Latency::LogNormal { mu, sigma } => {
                let z: f64 = StandardNormal.sample(rng);
                Duration::from_secs_f64((mu + sigma * z).exp().min(1e6))
            }
            Latency::Empirical(v) => v[rng.random_range(0..v.len())],
        }
    }
}

/// The latencies of the rows of `path` whose model contains `model`.
pub fn load_csv(path: &Path, model: &str) -> Result<Vec<Duration>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let (Some(mi), Some(li)) = (
        cols.iter().position(|c| *c == "model"),
        cols.iter().position(|c| *c == "latency_s"),
    ) else {
        return Err(format!(
            "{}: the header must have `model` and `latency_s` columns",
            path.display()
        ));
    };
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(m), Some(l)) = (fields.get(mi), fields.get(li)) else {
            return Err(format!(
                "{}:{}: expected {} columns",
                path.display(),
                n + 2,
                cols.len()
            ));
        };
        if m.contains(model) {
            let secs: f64 = l.trim().parse().map_err(|_| {
                format!(
                    "{}:{}: `latency_s` {l:?} is not a number",
                    path.display(),
                    n + 2
                )
            })?;
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(format!(
                    "{}:{}: `latency_s` {secs} is negative",
                    path.display(),
                    n + 2
                ));
            }
            out.push(Duration::from_secs_f64(secs));
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no rows for model {model:?}", path.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Distributions: parsing the CSV, sampling shapes.
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn empirical_reads_matching_rows_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.csv");
        std::fs::write(&p, "model,latency_s\nx_gpt,1.5\ny_claude,3\nx_gpt,0.5\n").unwrap();
        assert_eq!(
            load_csv(&p, "gpt").unwrap(),
            vec![Duration::from_millis(1500), Duration::from_millis(500)]
        );
        assert!(load_csv(&p, "gemini")
            .unwrap_err()
            .contains("no rows for model \"gemini\""));
        std::fs::write(&p, "model,latency_s\nx_gpt,fast\n").unwrap();
        assert!(load_csv(&p, "gpt")
            .unwrap_err()
            .ends_with("l.csv:2: `latency_s` \"fast\" is not a number"));
    }

    #[test]
    fn lognormal_median_is_about_right() {
        let l = Latency::from_spec(
            &LatencySpec::Lognormal {
                median: Duration::from_secs(2),
                sigma: 0.5,
            },
            Path::new("."),
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut v: Vec<Duration> = (0..4001).map(|_| l.sample(&mut rng)).collect();
        v.sort();
        let m = v[2000].as_secs_f64();
        assert!((1.8..2.2).contains(&m), "{m}");
    }
}
