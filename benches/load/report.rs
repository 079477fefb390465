//! Results: one series of values (one per round) per scenario, path and metric, printed as
//! min/median/max and written as JSON, plus the comparisons against the performance targets.

use serde_json::{json, Value};

pub struct Series {
    pub scenario: String,
    pub path: &'static str,
    pub metric: &'static str,
    pub values: Vec<f64>,
}

impl Series {
    pub fn median(&self) -> f64 {
        stats(&self.values).1
    }
}

/// (min, median, max).
pub fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => (f64::NAN, f64::NAN, f64::NAN),
        n => (v[0], v[n / 2], v[n - 1]),
    }
}

/// The `p`-quantile of sorted nanosecond samples, in microseconds.
pub fn pct_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() as f64 * p) as usize).min(sorted_ns.len() - 1);
    sorted_ns[i] as f64 / 1000.0
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[derive(Default)]
pub struct Report {
    pub series: Vec<Series>,
    pub targets: Vec<Target>,
}

pub struct Target {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub limit: f64,
    /// `true` when the value must be at most the limit, `false` when at least.
    pub at_most: bool,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_most {
            self.value <= self.limit
        } else {
            self.value >= self.limit
        }
    }
}

impl Report {
    pub fn push(
        &mut self,
        scenario: &str,
        path: &'static str,
        metric: &'static str,
        values: Vec<f64>,
    ) {
        let s = Series {
            scenario: scenario.to_string(),
            path,
            metric,
            values,
        };
        let (min, med, max) = stats(&s.values);
        println!(
            "{:<20} {:<10} {:<22} {:>10} {:>10} {:>10}",
            s.scenario,
            s.path,
            s.metric,
            fmt(min),
            fmt(med),
            fmt(max)
        );
        self.series.push(s);
    }

    pub fn median(&self, scenario: &str, path: &str, metric: &str) -> f64 {
        self.series
            .iter()
            .find(|s| s.scenario == scenario && s.path == path && s.metric == metric)
            .map(Series::median)
            .unwrap_or(f64::NAN)
    }

    pub fn target(
        &mut self,
        name: &'static str,
        value: f64,
        unit: &'static str,
        limit: f64,
        at_most: bool,
    ) {
        if !value.is_nan() {
            self.targets.push(Target {
                name,
                value,
                unit,
                limit,
                at_most,
            });
        }
    }

    pub fn print_targets(&self) {
        println!(
            "\n{:<44} {:>10} {:>12}  result",
            "target (medians)", "value", "limit"
        );
        for t in &self.targets {
            println!(
                "{:<44} {:>10} {:>12}  {}",
                t.name,
                format!("{}{}", fmt(t.value), t.unit),
                format!(
                    "{} {}{}",
                    if t.at_most { "<=" } else { ">=" },
                    fmt(t.limit),
                    t.unit
                ),
                if t.met() { "met" } else { "NOT MET" }
            );
        }
    }

    pub fn json(&self, header: Value) -> Value {
        json!({
            "run": header,
            "series": self.series.iter().map(|s| {
                let (min, med, max) = stats(&s.values);
                json!({"scenario": s.scenario, "path": s.path, "metric": s.metric,
                       "min": min, "median": med, "max": max, "values": s.values})
            }).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "value": t.value, "unit": t.unit, "limit": t.limit,
                "at_most": t.at_most, "met": t.met()
            })).collect::<Vec<_>>(),
        })
    }
}
