//! The report: tables printed as they are measured and written to BENCHMARKS.md, with the
//! machine, kernel, tool versions and date of the run.

use std::{fmt::Write as _, fs, process::Command};

/// One table of results, with notes under it.
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// A GitHub-flavoured Markdown table, columns padded so it reads in a terminal too.
    pub fn markdown(&self) -> String {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..cols)
                .map(|i| {
                    let c = cells.get(i).map_or("", String::as_str);
                    format!("{c:<w$}", w = width[i])
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = format!("### {}\n\n", self.title);
        out += &line(&self.headers);
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out += &format!("|-{}-|\n", rule.join("-|-"));
        for r in &self.rows {
            out += &line(r);
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// A section of the report: prose, then tables; or why it could not be measured.
pub struct Section {
    pub title: String,
    pub intro: String,
    pub tables: Vec<Table>,
    pub failure: Option<String>,
    /// A section rendered elsewhere (another run's `--section-out`), printed as it is.
    pub verbatim: Option<String>,
}

impl Section {
    pub fn new(title: &str, intro: &str) -> Self {
        Self {
            title: title.to_owned(),
            intro: intro.to_owned(),
            tables: Vec::new(),
            failure: None,
            verbatim: None,
        }
    }

    pub fn markdown(&self) -> String {
        if let Some(text) = &self.verbatim {
            return text.clone();
        }
        let mut out = format!("## {}\n\n{}\n\n", self.title, self.intro.trim());
        for t in &self.tables {
            out += &t.markdown();
            out.push('\n');
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(out, "**Not measured in this run:** {f}\n");
        }
        out
    }
}

/// What the figures were measured on.
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub memory: String,
    pub kernel: String,
    pub date: String,
    pub tools: Vec<(String, String)>,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let memory = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)),
            );
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        let date = first_line(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]);
        let tools = [
            ("xdp-filter", "xdp-tools"),
            ("bpftool", "bpftool"),
            ("nft", "nftables"),
        ]
        .iter()
        .map(|(tool, deb)| ((*tool).to_owned(), deb_version(deb)))
        .collect();
        Self {
            cpus,
            model,
            memory,
            kernel,
            date,
            tools,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "- Machine: {} CPUs ({}), {} memory\n- Kernel: {}\n- Date: {}\n",
            self.cpus, self.model, self.memory, self.kernel, self.date
        );
        let tools: Vec<String> = self.tools.iter().map(|(n, v)| format!("{n} {v}")).collect();
        let _ = writeln!(out, "- Peers: {}", tools.join("; "));
        out
    }
}

fn first_line(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The installed version of Debian package `name`, as dpkg knows it.
fn deb_version(name: &str) -> String {
    let v = first_line(&["dpkg-query", "-W", "-f=${Version}", name]);
    if v.is_empty() || v.contains("no packages found") {
        "(not installed)".to_owned()
    } else {
        v
    }
}

/// A ratio as `0.83x`, or `-` when either side is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

/// `met` or `missed` for a target, `-` when it cannot be judged.
pub fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".to_owned(),
        Some(false) => "**missed**".to_owned(),
        None => "-".to_owned(),
    }
}
