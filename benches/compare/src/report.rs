//! Results of a comparison run: kept as JSON, summarised (median, min, max per runtime and the
//! kelson/containerd ratio of medians), and rendered as a Markdown table and SVG charts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

pub const KELSON: &str = "kelson";
pub const REFERENCE: &str = "containerd";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// When and where: `date -u`, kernel, cores.
    pub date: String,
    pub machine: String,
    pub runs: usize,
    /// Runtime name → what its Version RPC reported.
    pub runtimes: BTreeMap<String, String>,
    pub metrics: Vec<Metric>,
    pub conformance: Vec<Conformance>,
    /// Costs of the machine itself that every runtime pays (name → samples in ms).
    #[serde(default)]
    pub baseline: BTreeMap<String, Vec<f64>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Metric {
    pub id: String,
    pub title: String,
    /// "ms" or "KiB": lower is better for every metric.
    pub unit: String,
    /// The kelson/containerd ratio of medians the project aims at (at most), if any.
    pub target: Option<f64>,
    /// Runtime name → samples.
    pub samples: BTreeMap<String, Vec<f64>>,
    /// The date of the run this metric came from, when it was merged in from a later run
    /// than the file's (`compare --merge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Conformance {
    pub runtime: String,
    pub passed: Vec<String>,
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median (mean of the two middle values for an even count), min and max; None when empty or
/// when a sample is not a number.
pub fn summary(v: &[f64]) -> Option<Summary> {
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: s[0],
        max: s[n - 1],
        n,
    })
}

impl Metric {
    pub fn summary(&self, runtime: &str) -> Option<Summary> {
        summary(self.samples.get(runtime)?)
    }

    /// kelson's median over containerd's.
    pub fn ratio(&self) -> Option<f64> {
        let k = self.summary(KELSON)?.median;
        let c = self.summary(REFERENCE)?.median;
        (c > 0.0).then(|| k / c)
    }

    pub fn target_met(&self) -> Option<bool> {
        Some(self.ratio()? <= self.target?)
    }
}

impl Results {
    /// `newer`'s metrics replace (or join) this file's, each marked with the run it came
    /// from; its conformance results and baselines, when it has any, replace these.
    pub fn merge(mut self, newer: Results) -> Results {
        for mut m in newer.metrics {
            if newer.date != self.date {
                m.run = Some(format!("{}, {} rounds", newer.date, newer.runs));
            }
            match self.metrics.iter().position(|o| o.id == m.id) {
                Some(i) => self.metrics[i] = m,
                None => self.metrics.push(m),
            }
        }
        if !newer.conformance.is_empty() {
            self.conformance = newer.conformance;
        }
        self.baseline.extend(newer.baseline);
        self.runtimes.extend(newer.runtimes);
        self
    }

    /// Record samples for `runtime` under metric `id` (created on first use).
    pub fn add(
        &mut self,
        id: &str,
        title: &str,
        unit: &str,
        target: Option<f64>,
        runtime: &str,
        values: &[f64],
    ) {
        let i = match self.metrics.iter().position(|m| m.id == id) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    id: id.into(),
                    title: title.into(),
                    unit: unit.into(),
                    target,
                    samples: BTreeMap::new(),
                    run: None,
                });
                self.metrics.len() - 1
            }
        };
        self.metrics[i]
            .samples
            .entry(runtime.into())
            .or_default()
            .extend_from_slice(values);
    }

    pub fn metric(&self, id: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.id == id)
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ms" if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        "ms" if v >= 100.0 => format!("{v:.0} ms"),
        "ms" => format!("{v:.1} ms"),
        "KiB" if v >= 10240.0 => format!("{:.1} MiB", v / 1024.0),
        _ => format!("{v:.0} {unit}"),
    }
}

fn fmt_summary(s: Option<Summary>, unit: &str) -> String {
    match s {
        Some(s) if s.n > 1 => format!(
            "{} ({} – {})",
            fmt_value(s.median, unit),
            fmt_value(s.min, unit),
            fmt_value(s.max, unit)
        ),
        Some(s) => fmt_value(s.median, unit),
        None => "—".into(),
    }
}

/// The Markdown that goes between the markers in docs/benchmarks.md.
pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "Run of {} on {}; {} rounds, kelson and containerd alternating within each round \
         (who goes first alternates too). Figures: median (min – max) over all samples.\n\n",
        r.date, r.machine, r.runs
    ));
    for (name, version) in &r.runtimes {
        o.push_str(&format!("- {name}: {version}\n"));
    }
    o.push_str(
        "\n| Scenario | kelson | containerd | kelson / containerd | target | met |\n\
         |---|---|---|---|---|---|\n",
    );
    for m in &r.metrics {
        let title = match &m.run {
            Some(run) => format!("{} (run of {run})", m.title),
            None => m.title.clone(),
        };
        o.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            title,
            fmt_summary(m.summary(KELSON), &m.unit),
            fmt_summary(m.summary(REFERENCE), &m.unit),
            m.ratio().map(|x| format!("{x:.2}")).unwrap_or("—".into()),
            m.target.map(|t| format!("≤ {t:.2}")).unwrap_or_default(),
            match m.target_met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        ));
    }
    for (name, v) in &r.baseline {
        o.push_str(&format!(
            "\nMachine baseline, paid by every runtime: {name}: {}.\n",
            fmt_summary(summary(v), "ms")
        ));
    }
    if !r.conformance.is_empty() {
        o.push_str(
            "\nConformance suite (`kelson-conformance`) on both runtimes in the same run:\n\n",
        );
        o.push_str("| Runtime | passed | failed |\n|---|---|---|\n");
        for c in &r.conformance {
            let failed = if c.failed.is_empty() {
                "none".to_owned()
            } else {
                c.failed
                    .iter()
                    .map(|(n, e)| format!("`{n}`: {}", e.replace('|', "\\|").replace('\n', " ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            o.push_str(&format!(
                "| {} | {} | {failed} |\n",
                c.runtime,
                c.passed.len()
            ));
        }
    }
    o.push_str(
        "\n![kelson / containerd](bench/ratios.svg)\n\n![latencies](bench/latency.svg)\n\n\
         ![bulk operations](bench/bulk.svg)\n",
    );
    o
}

pub const BEGIN: &str = "<!-- compare:begin (generated by kelson-bench report; edit outside) -->";
pub const END: &str = "<!-- compare:end -->";

/// Replace the generated section of `doc` (appending one if it has none).
pub fn splice(doc: &str, generated: &str) -> String {
    let section = format!("{BEGIN}\n{generated}{END}");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &doc[..b], &doc[e + END.len()..])
        }
        _ => format!("{}\n{section}\n", doc.trim_end()),
    }
}

/// One horizontal bar: value, optional min–max whisker, colour.
struct Bar {
    value: f64,
    range: Option<(f64, f64)>,
    color: RGBColor,
}

const KELSON_COLOR: RGBColor = RGBColor(0x2b, 0x7a, 0x78);
const REFERENCE_COLOR: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);

/// A horizontal bar chart with one row per label (several bars per row) and optional vertical
/// reference lines.
fn bar_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    rows: &[(String, Vec<Bar>)],
    lines: &[(f64, &str)],
) -> anyhow::Result<()> {
    let height = 80 + 44 * rows.len() as u32;
    let root = SVGBackend::new(path, (860, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = rows
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|b| b.range.map_or(b.value, |r| r.1)))
        .chain(lines.iter().map(|l| l.0))
        .fold(0.0f64, f64::max)
        * 1.15;
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..xmax.max(1e-9), 0.0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(x_desc)
        .draw()?;
    for (i, (label, bars)) in rows.iter().enumerate() {
        // Row i occupies [n-i-1, n-i) from the top; its bars share the middle 80 %.
        let top = n - i as f64 - 0.1;
        let h = 0.8 / bars.len().max(1) as f64;
        for (j, b) in bars.iter().enumerate() {
            let y1 = top - j as f64 * h;
            let y0 = y1 - h * 0.9;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y0), (b.value, y1)],
                b.color.filled(),
            )))?;
            if let Some((lo, hi)) = b.range {
                let ym = (y0 + y1) / 2.0;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(lo, ym), (hi, ym)],
                    BLACK.stroke_width(1),
                )))?;
            }
        }
        let (_, py) = chart.backend_coord(&(0.0, n - i as f64 - 0.5));
        root.draw(&Text::new(
            label.clone(),
            (10, py - 7),
            ("sans-serif", 13).into_font(),
        ))?;
    }
    for (x, label) in lines {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*x, 0.0), (*x, n)],
            RED.stroke_width(1),
        )))?;
        // Right-aligned just left of the line, so it never runs off the plot.
        let (px, py) = chart.backend_coord(&(*x, n));
        let font = ("sans-serif", 12).into_font().color(&RED);
        let style = font.pos(Pos::new(HPos::Right, VPos::Top));
        root.draw(&Text::new(label.to_string(), (px - 4, py + 2), style))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Write ratios.svg, latency.svg and bulk.svg into `dir`.
pub fn charts(r: &Results, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ratio_rows: Vec<(String, Vec<Bar>)> = r
        .metrics
        .iter()
        .filter_map(|m| {
            let ratio = m.ratio()?;
            let label = match m.target {
                Some(t) => format!("{} (target ≤ {t:.2})", m.id),
                None => m.id.clone(),
            };
            Some((
                label,
                vec![Bar {
                    value: ratio,
                    range: None,
                    color: KELSON_COLOR,
                }],
            ))
        })
        .collect();
    bar_chart(
        &dir.join("ratios.svg"),
        "kelson / containerd, ratio of medians (lower is better)",
        "ratio",
        &ratio_rows,
        &[(1.0, "containerd = 1")],
    )?;
    let rows_for = |ids: &[&str], scale: f64| -> Vec<(String, Vec<Bar>)> {
        ids.iter()
            .filter_map(|id| {
                let m = r.metric(id)?;
                let bars = [(KELSON, KELSON_COLOR), (REFERENCE, REFERENCE_COLOR)]
                    .iter()
                    .filter_map(|(rt, color)| {
                        let s = m.summary(rt)?;
                        Some(Bar {
                            value: s.median / scale,
                            range: Some((s.min / scale, s.max / scale)),
                            color: *color,
                        })
                    })
                    .collect();
                Some((format!("{} (kelson, containerd)", m.id), bars))
            })
            .collect()
    };
    bar_chart(
        &dir.join("latency.svg"),
        "Per-operation latency: median, min–max (kelson teal, containerd grey)",
        "milliseconds",
        &rows_for(
            &["pod_start", "create_start", "stop_remove", "exec_sync"],
            1.0,
        ),
        &[],
    )?;
    bar_chart(
        &dir.join("bulk.svg"),
        "Bulk operations: median, min–max (kelson teal, containerd grey)",
        "seconds",
        &rows_for(&["pods_20", "pods_50", "log_100mb", "pull_160mb"], 1000.0),
        &[],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Results {
        let mut r = Results {
            date: "2026-11-22".into(),
            machine: "test".into(),
            runs: 2,
            ..Default::default()
        };
        r.add(
            "pod_start",
            "Pod start",
            "ms",
            Some(1.0 / 3.0),
            KELSON,
            &[5.0, 7.0, 6.0],
        );
        r.add(
            "pod_start",
            "Pod start",
            "ms",
            Some(1.0 / 3.0),
            REFERENCE,
            &[30.0, 20.0],
        );
        r.add(
            "daemon_rss",
            "Daemon RSS",
            "KiB",
            Some(0.25),
            KELSON,
            &[20000.0],
        );
        r.add(
            "daemon_rss",
            "Daemon RSS",
            "KiB",
            Some(0.25),
            REFERENCE,
            &[40000.0],
        );
        r.conformance.push(Conformance {
            runtime: REFERENCE.into(),
            passed: vec!["a".into()],
            failed: vec![("b".into(), "x | y\nz".into())],
        });
        r
    }

    #[test]
    fn summary_median_min_max() {
        assert_eq!(summary(&[]), None);
        assert_eq!(summary(&[1.0, f64::NAN]), None);
        let s = summary(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn ratios_and_targets() {
        let r = sample();
        let m = r.metric("pod_start").unwrap();
        assert_eq!(m.ratio(), Some(6.0 / 25.0));
        assert_eq!(m.target_met(), Some(true));
        let d = r.metric("daemon_rss").unwrap();
        assert_eq!(d.ratio(), Some(0.5));
        assert_eq!(d.target_met(), Some(false));
    }

    #[test]
    fn markdown_table_escapes_and_flags() {
        let md = markdown(&sample());
        assert!(md.contains("| Pod start | 6.0 ms (5.0 ms – 7.0 ms) | 25.0 ms (20.0 ms – 30.0 ms) | 0.24 | ≤ 0.33 | yes |"), "{md}");
        assert!(
            md.contains("| Daemon RSS | 19.5 MiB | 39.1 MiB | 0.50 | ≤ 0.25 | **no** |"),
            "{md}"
        );
        assert!(md.contains("`b`: x \\| y z"), "{md}");
    }

    #[test]
    fn splice_replaces_only_the_generated_section() {
        let doc = format!("# Bench\nkept\n{BEGIN}\nold\n{END}\ntail\n");
        let out = splice(&doc, "new\n");
        assert_eq!(out, format!("# Bench\nkept\n{BEGIN}\nnew\n{END}\ntail\n"));
        let appended = splice("# Bench\n", "new\n");
        assert_eq!(appended, format!("# Bench\n{BEGIN}\nnew\n{END}\n"));
    }

    #[test]
    fn merge_replaces_the_scenarios_run_and_names_their_run() {
        let old = sample();
        let mut newer = Results {
            date: "2026-11-23".into(),
            runs: 3,
            ..Default::default()
        };
        newer.add("pod_start", "Pod start", "ms", None, KELSON, &[5.0]);
        newer.add("stats_100", "Stats", "ms", None, KELSON, &[7.0]);
        let n_old = old.metrics.len();
        let m = old.merge(newer);
        assert_eq!(m.metrics.len(), n_old + 1);
        let ps = m.metric("pod_start").unwrap();
        assert_eq!(ps.samples[KELSON], vec![5.0]);
        assert_eq!(ps.run.as_deref(), Some("2026-11-23, 3 rounds"));
        assert_eq!(m.date, "2026-11-22");
        assert!(!m.conformance.is_empty() || sample().conformance.is_empty());
        assert!(markdown(&m).contains("(run of 2026-11-23, 3 rounds)"));
    }

    #[test]
    fn charts_are_svg() {
        let dir = tempfile::tempdir().unwrap();
        charts(&sample(), dir.path()).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("ratios.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("pod_start"));
        assert!(dir.path().join("latency.svg").exists());
    }
}
