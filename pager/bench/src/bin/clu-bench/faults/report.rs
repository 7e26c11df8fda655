//! Samples, the printed table, the CSV and the SVG plot of `clu-bench faults`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::median;

/// Every measurement, by key (`pinned/pager/minor`), one value per run.
#[derive(Default)]
pub struct Samples(BTreeMap<String, Vec<f64>>);

impl Samples {
    pub fn add(&mut self, key: &str, v: f64) {
        self.0.entry(key.to_owned()).or_default().push(v);
    }

    /// (median, min, max)
    pub fn stats(&self, key: &str) -> Option<(f64, f64, f64)> {
        let v = self.0.get(key)?;
        let mut s = v.clone();
        let lo = s.iter().copied().fold(f64::MAX, f64::min);
        let hi = s.iter().copied().fold(f64::MIN, f64::max);
        Some((median(&mut s), lo, hi))
    }

    /// The median of the per-run ratios `a / b` (each pair measured next to each other).
    pub fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        let (a, b) = (self.0.get(a)?, self.0.get(b)?);
        let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        (!r.is_empty()).then(|| median(&mut r))
    }
}

/// A line of the table: ours beside its reference.
pub struct Row {
    pub label: String,
    pub ours: String,
    pub reference: Option<(String, &'static str)>,
    pub unit: &'static str,
}

impl Row {
    pub fn new(label: impl Into<String>, ours: impl Into<String>, unit: &'static str) -> Row {
        Row {
            label: label.into(),
            ours: ours.into(),
            reference: None,
            unit,
        }
    }

    pub fn vs(mut self, key: impl Into<String>, name: &'static str) -> Row {
        self.reference = Some((key.into(), name));
        self
    }
}

fn fmt3(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((m, lo, hi)) => format!("{m:>9.2} {lo:>9.2} {hi:>9.2}"),
        None => format!("{:>9} {:>9} {:>9}", "-", "-", "-"),
    }
}

pub fn table(s: &Samples, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<46} {:<8} {:>9} {:>9} {:>9}   {:<18} {:>9} {:>9} {:>9} {:>7}",
        "case", "unit", "median", "min", "max", "reference", "median", "min", "max", "ratio"
    );
    for r in rows {
        let (rname, rstats, ratio) = match &r.reference {
            Some((k, name)) => (
                *name,
                fmt3(s.stats(k)),
                s.ratio(&r.ours, k)
                    .map_or("-".into(), |x| format!("{x:.2}")),
            ),
            None => ("", String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:<46} {:<8} {}   {:<18} {} {:>7}",
            r.label,
            r.unit,
            fmt3(s.stats(&r.ours)),
            rname,
            rstats,
            ratio
        );
    }
    out
}

pub fn csv(s: &Samples, rows: &[Row], path: &Path) -> std::io::Result<()> {
    let mut out =
        String::from("case,unit,median,min,max,reference,ref_median,ref_min,ref_max,ratio\n");
    let three = |x: Option<(f64, f64, f64)>| {
        x.map_or(",,".into(), |(m, lo, hi)| format!("{m:.4},{lo:.4},{hi:.4}"))
    };
    for r in rows {
        let (name, rs, ratio) = match &r.reference {
            Some((k, name)) => (
                *name,
                three(s.stats(k)),
                s.ratio(&r.ours, k)
                    .map_or(String::new(), |x| format!("{x:.4}")),
            ),
            None => ("", ",,".into(), String::new()),
        };
        let _ = writeln!(
            out,
            "\"{}\",{},{},{},{},{}",
            r.label,
            r.unit,
            three(s.stats(&r.ours)),
            name,
            rs,
            ratio
        );
    }
    std::fs::write(path, out)
}

/// Horizontal bars on a log scale: ours (blue) above its reference (grey), per row.
pub fn svg(s: &Samples, rows: &[Row], title: &str, path: &Path) -> std::io::Result<()> {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.unit != "pages/s").collect();
    let (w, left, bar, gap) = (1100.0, 430.0, 11.0, 12.0);
    let h = 60.0 + rows.len() as f64 * (2.0 * bar + gap) + 30.0;
    let vals: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            let mut v = vec![s.stats(&r.ours).map(|x| x.0)];
            v.push(
                r.reference
                    .as_ref()
                    .and_then(|(k, _)| s.stats(k))
                    .map(|x| x.0),
            );
            v
        })
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let lo = vals
        .iter()
        .copied()
        .fold(f64::MAX, f64::min)
        .log10()
        .floor();
    let hi = vals.iter().copied().fold(f64::MIN, f64::max).log10().ceil();
    let x = |v: f64| {
        left + (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo).max(1.0) * (w - left - 40.0)
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<text x="10" y="20" font-size="14">{title}</text>"#);
    let _ = writeln!(
        o,
        r#"<text x="10" y="38">blue: ours; grey: the reference (kernel file pager, msync, or bare userfaultfd). Log scale, medians.</text>"#
    );
    let mut y = 55.0;
    for r in &rows {
        let _ = writeln!(
            o,
            r#"<text x="10" y="{:.1}">{} ({})</text>"#,
            y + bar + 3.0,
            r.label,
            r.unit
        );
        if let Some((m, _, _)) = s.stats(&r.ours) {
            let _ = writeln!(
                o,
                r##"<rect x="{left}" y="{y:.1}" width="{:.1}" height="{bar}" fill="#3b6fb6"/><text x="{:.1}" y="{:.1}">{m:.2}</text>"##,
                x(m) - left,
                x(m) + 4.0,
                y + bar - 2.0
            );
        }
        if let Some((k, _)) = &r.reference {
            if let Some((m, _, _)) = s.stats(k) {
                let yy = y + bar;
                let _ = writeln!(
                    o,
                    r##"<rect x="{left}" y="{yy:.1}" width="{:.1}" height="{bar}" fill="#9a9a9a"/><text x="{:.1}" y="{:.1}">{m:.2}</text>"##,
                    x(m) - left,
                    x(m) + 4.0,
                    yy + bar - 2.0
                );
            }
        }
        y += 2.0 * bar + gap;
    }
    let _ = writeln!(o, "</svg>");
    std::fs::write(path, o)
}
