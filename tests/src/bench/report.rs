//! The table the bench prints (Markdown, so that BENCHMARKS.md can hold it
//! as is), the targets, and the machine the figures were taken on.

use std::fmt::Write as _;

/// One line of the table.
#[derive(Debug)]
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: String,
    /// `None`: no target (context only).
    pub met: Option<bool>,
}

#[derive(Debug, Default)]
pub struct Report {
    sections: Vec<(String, Vec<Row>)>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    fn push(&mut self, row: Row) {
        if self.sections.is_empty() {
            self.section("");
        }
        if let Some((_, rows)) = self.sections.last_mut() {
            rows.push(row);
        }
    }

    /// A figure with no target.
    pub fn info(&mut self, metric: impl Into<String>, value: impl Into<String>) {
        self.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: String::new(),
            met: None,
        });
    }

    /// A figure with a target.
    pub fn check(&mut self, metric: impl Into<String>, value: impl Into<String>, target: impl Into<String>, met: bool) {
        self.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: target.into(),
            met: Some(met),
        });
    }

    pub fn missed(&self) -> usize {
        self.sections
            .iter()
            .flat_map(|(_, r)| r)
            .filter(|r| r.met == Some(false))
            .count()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| Measurement | Value | Target | |");
        let _ = writeln!(out, "|---|---:|---|---|");
        for (title, rows) in &self.sections {
            if !title.is_empty() {
                let _ = writeln!(out, "| **{title}** | | | |");
            }
            for r in rows {
                let status = match r.met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "",
                };
                let _ = writeln!(out, "| {} | {} | {} | {status} |", r.metric, r.value, r.target);
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n{n}");
        }
        out
    }
}

pub fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

pub fn mib(kb: u64) -> String {
    format!("{:.2} MiB", kb as f64 / 1024.0)
}

/// The machine, as BENCHMARKS.md records it.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "machine: nproc {nproc}, {model}, {mem} RAM, Linux {kernel}; {}",
        utc_now()
    )
}

/// The 1, 5 and 15 minute load averages (other work on the machine shows here).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `YYYY-MM-DD HH:MM UTC`, from the system clock (civil-from-days).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem / 60 % 60)
}
