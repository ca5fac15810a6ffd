//! `report.svg`: a self-contained picture of a run, written with no
//! dependencies.
//!
//! Four panels sharing the step axis where it applies: training loss,
//! validation perplexity (log scale), unique blocks (live slots), and the tie
//! pattern over time (a heatmap: one column per agent decision, one row per
//! block, each cell coloured by the block whose weights it uses; independent
//! blocks are dark grey).

use std::fmt::Write;

/// Training loss at a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossPoint {
    pub step: u64,
    pub train_loss: f64,
}

/// Validation perplexity at a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalPoint {
    pub step: u64,
    pub valid_ppl: f64,
}

/// The tie table after one decision (or at any step for a static policy).
#[derive(Clone, Debug, PartialEq)]
pub struct TieSnapshot {
    pub step: u64,
    /// The state vector s: `s[i]` is the block whose weights block i took,
    /// i when independent.
    pub state: Vec<usize>,
    /// Block -> slot; the number of distinct entries is the unique blocks.
    pub slots: Vec<usize>,
}

impl TieSnapshot {
    pub fn unique_blocks(&self) -> usize {
        let mut s = self.slots.clone();
        s.sort_unstable();
        s.dedup();
        s.len()
    }
}

/// Everything the report draws.
#[derive(Clone, Debug, Default)]
pub struct ReportData<'a> {
    pub title: &'a str,
    pub losses: &'a [LossPoint],
    pub evals: &'a [EvalPoint],
    pub ties: &'a [TieSnapshot],
}

const WIDTH: f64 = 960.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 150.0;
const PANEL_H: f64 = 170.0;
const HEAT_H: f64 = 260.0;
const GAP: f64 = 70.0;
const TOP: f64 = 60.0;
/// Heatmap columns at most (longer runs are sampled evenly) and points per
/// line at most, to keep the file small.
const MAX_COLS: usize = 600;
const MAX_POINTS: usize = 2000;

/// One group of points in [`render_scatter`]: a variant's runs, with the
/// mean and its error bars (one standard deviation each way).
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterSeries {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub mean: (f64, f64),
    pub err: (f64, f64),
}

/// Colours for series, in order (repeated beyond ten).
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// A scatter plot: every run as a small dot, each series' mean as a larger
/// one with error bars, and a legend on the right.
pub fn render_scatter(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[ScatterSeries],
) -> String {
    let height = TOP + 2.0 * PANEL_H + GAP + 20.0;
    let plot_h = 2.0 * PANEL_H;
    let plot_w = WIDTH - LEFT - RIGHT;
    let mut svg = svg_start(height, title);
    svg.push_str("<g id=\"scatter\">\n");
    frame(&mut svg, TOP, plot_h, y_label);
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let mut xs = vec![];
    let mut ys = vec![];
    for s in series {
        for p in s.points.iter().filter(|p| finite(p)) {
            xs.push(p.0);
            ys.push(p.1);
        }
        if finite(&s.mean) && finite(&s.err) {
            xs.extend([s.mean.0 - s.err.0, s.mean.0 + s.err.0]);
            ys.extend([s.mean.1 - s.err.1, s.mean.1 + s.err.1]);
        }
    }
    if xs.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text></g></svg>"##,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
        return svg;
    }
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let pad = if hi - lo < 1e-12 {
            0.5 * lo.abs().max(1.0)
        } else {
            0.08 * (hi - lo)
        };
        (lo - pad, hi + pad)
    };
    let (x0, x1) = range(&xs);
    let (y0, y1) = range(&ys);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let py = |y: f64| TOP + plot_h - (y - y0) / (y1 - y0) * plot_h;
    x_ticks(&mut svg, (x0, x1), TOP + plot_h, x_label);
    for v in nice_ticks(y0, y1) {
        let yy = py(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        for &(x, y) in s.points.iter().filter(|p| finite(p)) {
            let _ = writeln!(
                svg,
                r#"<circle class="run" cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}" fill-opacity="0.6"/>"#,
                px(x),
                py(y)
            );
        }
        if !(finite(&s.mean) && finite(&s.err)) {
            continue;
        }
        let (mx, my) = (px(s.mean.0), py(s.mean.1));
        let _ = writeln!(
            svg,
            r#"<path class="errorbar" d="M{:.1},{my:.1}H{:.1}M{mx:.1},{:.1}V{:.1}" stroke="{colour}" stroke-width="1.5"/><circle class="mean" cx="{mx:.1}" cy="{my:.1}" r="5" fill="{colour}"/>"#,
            px(s.mean.0 - s.err.0),
            px(s.mean.0 + s.err.0),
            py(s.mean.1 - s.err.1),
            py(s.mean.1 + s.err.1),
        );
        let ly = TOP + 8.0 + k as f64 * 18.0;
        let lx = WIDTH - RIGHT + 12.0;
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            lx + 5.0,
            ly,
            lx + 14.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// The unique blocks over time and the tie pattern heatmap of one run.
pub fn render_ties_svg(title: &str, ties: &[TieSnapshot]) -> String {
    let height = TOP + PANEL_H + GAP + HEAT_H + GAP;
    let mut svg = svg_start(height, title);
    let steps = step_range(&ReportData {
        ties,
        ..Default::default()
    });
    unique_blocks_panel(&mut svg, ties, steps, TOP);
    heatmap(&mut svg, ties, TOP + PANEL_H + GAP);
    svg.push_str("</svg>\n");
    svg
}

fn unique_blocks_panel(svg: &mut String, ties: &[TieSnapshot], steps: (f64, f64), top: f64) {
    let unique: Vec<(f64, f64)> = ties
        .iter()
        .map(|t| (t.step as f64, t.unique_blocks() as f64))
        .collect();
    line_panel(
        svg,
        "unique-blocks",
        "unique blocks",
        &unique,
        steps,
        top,
        false,
        true,
        "#2ca02c",
    );
}

/// The whole SVG document.
pub fn render_svg(data: &ReportData) -> String {
    let height = TOP + 3.0 * (PANEL_H + GAP) + HEAT_H + GAP;
    let mut svg = svg_start(height, data.title);
    let steps = step_range(data);
    let mut y = TOP;
    let loss: Vec<(f64, f64)> = data
        .losses
        .iter()
        .map(|p| (p.step as f64, p.train_loss))
        .collect();
    line_panel(
        &mut svg,
        "train-loss",
        "training loss",
        &loss,
        steps,
        y,
        false,
        false,
        "#1f77b4",
    );
    y += PANEL_H + GAP;
    let ppl: Vec<(f64, f64)> = data
        .evals
        .iter()
        .map(|p| (p.step as f64, p.valid_ppl))
        .collect();
    line_panel(
        &mut svg,
        "valid-ppl",
        "valid perplexity (log)",
        &ppl,
        steps,
        y,
        true,
        false,
        "#d62728",
    );
    y += PANEL_H + GAP;
    unique_blocks_panel(&mut svg, data.ties, steps, y);
    y += PANEL_H + GAP;
    heatmap(&mut svg, data.ties, y);
    svg.push_str("</svg>\n");
    svg
}

fn step_range(data: &ReportData) -> (f64, f64) {
    let steps = data
        .losses
        .iter()
        .map(|p| p.step)
        .chain(data.evals.iter().map(|p| p.step))
        .chain(data.ties.iter().map(|p| p.step));
    let (lo, hi) = steps.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo as f64, lo as f64 + 1.0)
    } else {
        (lo as f64, hi as f64)
    }
}

/// A line chart of `points` (finite values only) with axes, ticks and labels.
#[allow(clippy::too_many_arguments)]
fn line_panel(
    svg: &mut String,
    id: &str,
    label: &str,
    points: &[(f64, f64)],
    (x0, x1): (f64, f64),
    top: f64,
    log: bool,
    from_zero: bool,
    colour: &str,
) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(_, v)| v.is_finite() && (!log || v > 0.0))
        .collect();
    let _ = writeln!(svg, r#"<g id="{id}">"#);
    frame(svg, top, PANEL_H, label);
    if pts.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text></g>"##,
            LEFT + plot_w / 2.0,
            top + PANEL_H / 2.0
        );
        return;
    }
    let tf = |v: f64| if log { v.log10() } else { v };
    let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &(_, v)| {
        (lo.min(tf(v)), hi.max(tf(v)))
    });
    if y1 - y0 < 1e-9 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = 0.05 * (y1 - y0);
    // Counts read best against a zero baseline.
    let (y0, y1) = if from_zero && y0 >= 0.0 {
        (0.0, y1 + pad)
    } else {
        (y0 - pad, y1 + pad)
    };
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let py = |v: f64| top + PANEL_H - (tf(v) - y0) / (y1 - y0) * PANEL_H;
    x_ticks(svg, (x0, x1), top + PANEL_H, "step");
    let ticks = if log {
        log_ticks(10f64.powf(y0), 10f64.powf(y1))
    } else {
        nice_ticks(y0, y1)
    };
    for v in ticks {
        let yy = py(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    let stride = pts.len().div_ceil(MAX_POINTS);
    let coords: Vec<String> = pts
        .iter()
        .step_by(stride)
        .chain(pts.last())
        .map(|&(x, v)| format!("{:.1},{:.1}", px(x), py(v)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
        coords.join(" ")
    );
    if pts.len() <= 60 {
        for &(x, v) in &pts {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                px(x),
                py(v)
            );
        }
    }
    svg.push_str("</g>\n");
}

/// The tie pattern: one column per snapshot, one row per block (block 0 on
/// top); equal neighbouring cells in a row are merged into one rectangle.
fn heatmap(svg: &mut String, ties: &[TieSnapshot], top: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    svg.push_str("<g id=\"tie-heatmap\">\n");
    frame(svg, top, HEAT_H, "tie pattern (colour: source block)");
    let n_layer = ties.iter().map(|t| t.state.len()).max().unwrap_or(0);
    if n_layer == 0 {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no tie decisions</text></g>"##,
            LEFT + plot_w / 2.0,
            top + HEAT_H / 2.0
        );
        return;
    }
    let cols = ties.len().min(MAX_COLS);
    let pick = |c: usize| &ties[c * ties.len() / cols];
    let cw = plot_w / cols as f64;
    let rh = HEAT_H / n_layer as f64;
    for block in 0..n_layer {
        let colour_at = |c: usize| cell_colour(pick(c).state.get(block).copied(), block, n_layer);
        let mut start = 0;
        for c in 1..=cols {
            if c == cols || colour_at(c) != colour_at(start) {
                let _ = writeln!(
                    svg,
                    r#"<rect class="cell" x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{}"/>"#,
                    LEFT + start as f64 * cw,
                    top + block as f64 * rh,
                    (c - start) as f64 * cw,
                    rh,
                    colour_at(start)
                );
                start = c;
            }
        }
    }
    // Block labels on the left (at most ~16 of them).
    let every = n_layer.div_ceil(16);
    for block in (0..n_layer).step_by(every) {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{block}</text>"#,
            LEFT - 6.0,
            top + (block as f64 + 0.5) * rh + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate({},{:.1}) rotate(-90)" text-anchor="middle">block</text>"#,
        LEFT - 45.0,
        top + HEAT_H / 2.0
    );
    // Decision axis, labelled with the step of the sampled decision.
    for k in 0..=4 {
        let c = (k * (cols - 1)) / 4;
        let x = LEFT + (c as f64 + 0.5) * cw;
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + HEAT_H + 16.0,
            pick(c).step
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{:.1}" text-anchor="middle">decision (labelled by step; {} decisions)</text>"#,
        LEFT + plot_w / 2.0,
        top + HEAT_H + 36.0,
        ties.len()
    );
    // Legend: independent, then the source-block colour ramp.
    let lx = WIDTH - RIGHT + 16.0;
    let _ = writeln!(
        svg,
        r#"<rect x="{lx}" y="{top}" width="14" height="14" fill="{}"/><text x="{}" y="{}">independent</text>"#,
        cell_colour(Some(1), 1, 2),
        lx + 20.0,
        top + 11.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{lx}" y="{}">tied to block:</text>"#,
        top + 36.0
    );
    let shown = n_layer.min(12);
    for k in 0..shown {
        let j = k * (n_layer - 1).max(1) / (shown - 1).max(1);
        let yy = top + 44.0 + k as f64 * 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{yy}" width="14" height="14" fill="{}"/><text x="{}" y="{}">{j}</text>"#,
            cell_colour(Some(j), n_layer, n_layer),
            lx + 20.0,
            yy + 11.0
        );
    }
    svg.push_str("</g>\n");
}

/// Independent blocks are dark grey, missing entries light grey, tied blocks
/// a hue for their source block (blue for block 0 through red for the last).
fn cell_colour(source: Option<usize>, block: usize, n_layer: usize) -> String {
    match source {
        None => "#dddddd".into(),
        Some(j) if j == block => "#3a3a3a".into(),
        Some(j) => {
            let t = j as f64 / (n_layer.max(2) - 1) as f64;
            format!("hsl({:.0},75%,55%)", 240.0 - 240.0 * t)
        }
    }
}

fn frame(svg: &mut String, top: f64, h: f64, label: &str) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{h}" fill="none" stroke="#444"/><text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"##,
        top - 8.0,
        escape(label)
    );
}

fn x_ticks(svg: &mut String, (x0, x1): (f64, f64), bottom: f64, label: &str) {
    let plot_w = WIDTH - LEFT - RIGHT;
    for v in nice_ticks(x0, x1) {
        let x = LEFT + (v - x0) / (x1 - x0) * plot_w;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#444"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 4.0,
            bottom + 17.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
        LEFT + plot_w / 2.0,
        bottom + 34.0
    );
}

/// About five round ticks (1, 2 or 5 times a power of ten) inside [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi.is_nan() || lo.is_nan() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// 1, 2, 5 times powers of ten inside [lo, hi] (lo > 0).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = vec![];
    let mut p = 10f64.powf(lo.log10().floor());
    while p <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * p;
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        p *= 10.0;
    }
    if out.len() < 2 {
        out = nice_ticks(lo, hi);
    }
    out
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG document of the report's width and `height`: the white
/// background and the centred title.
fn svg_start(height: f64, title: &str) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text x="{}" y="32" font-size="18" text-anchor="middle">{}</text>
"#,
        WIDTH / 2.0,
        escape(title)
    );
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every element is closed in order; returns the element names.
    fn balanced_tags(svg: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = vec![];
        let mut names = vec![];
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if tag.starts_with('?') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or(format!("stray </{name}>"))?;
                if top != name.trim() {
                    return Err(format!("</{name}> closes <{top}>"));
                }
            } else {
                let name: String = tag.chars().take_while(|c| c.is_alphanumeric()).collect();
                names.push(name.clone());
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
        }
        if stack.is_empty() {
            Ok(names)
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    fn sample(
        n_layer: usize,
        decisions: usize,
    ) -> (Vec<LossPoint>, Vec<EvalPoint>, Vec<TieSnapshot>) {
        let losses = (0..500)
            .map(|s| LossPoint {
                step: s,
                train_loss: 3.0 + 7.0 * (-(s as f64) / 120.0).exp(),
            })
            .collect();
        let evals = (0..=10)
            .map(|k| EvalPoint {
                step: k * 50,
                valid_ppl: 20.0 + 2000.0 * (-(k as f64) / 2.0).exp(),
            })
            .collect();
        let mut table = crate::tying::table::TieTable::new(n_layer, Default::default()).unwrap();
        let mut rng = crate::rng::HostRng::new(3);
        let ties = (0..decisions)
            .map(|d| {
                let layer = 1 + d % (n_layer - 1);
                // Drift towards tying to block 0 over time.
                let a = if rng.uniform() < d as f64 / decisions as f64 {
                    0
                } else {
                    rng.below(layer as u64 + 1) as usize
                };
                table.apply_action(layer, a).unwrap();
                TieSnapshot {
                    step: 500 * d as u64 / decisions as u64,
                    state: table.state().to_vec(),
                    slots: table.slots().to_vec(),
                }
            })
            .collect();
        (losses, evals, ties)
    }

    #[test]
    fn report_is_well_formed_and_has_every_series() {
        let (losses, evals, ties) = sample(8, 300);
        let svg = render_svg(&ReportData {
            title: "run <test> & co",
            losses: &losses,
            evals: &evals,
            ties: &ties,
        });
        let names = balanced_tags(&svg).unwrap();
        assert_eq!(names[0], "svg");
        for id in ["train-loss", "valid-ppl", "unique-blocks", "tie-heatmap"] {
            assert!(svg.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert_eq!(svg.matches("class=\"series\"").count(), 3);
        assert!(svg.contains("run &lt;test&gt; &amp; co"));
        assert!(svg.contains("#3a3a3a"), "independent cells");
        assert!(svg.contains("hsl(240,"), "cells tied to block 0");
        // Every block row is covered by cells of total width = plot width.
        let cells = svg.matches("class=\"cell\"").count();
        assert!((8..8 * 300).contains(&cells), "{cells}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_and_degenerate_inputs_still_render() {
        let svg = render_svg(&ReportData::default());
        balanced_tags(&svg).unwrap();
        assert_eq!(svg.matches("no data").count(), 3);
        let one = [
            LossPoint {
                step: 5,
                train_loss: f64::NAN,
            },
            LossPoint {
                step: 5,
                train_loss: 2.0,
            },
        ];
        let svg = render_svg(&ReportData {
            losses: &one,
            ..Default::default()
        });
        balanced_tags(&svg).unwrap();
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn long_runs_are_sampled_to_bounded_size() {
        let (losses, evals, ties) = sample(48, 20_000);
        let svg = render_svg(&ReportData {
            title: "long",
            losses: &losses,
            evals: &evals,
            ties: &ties,
        });
        balanced_tags(&svg).unwrap();
        assert!(svg.matches("class=\"cell\"").count() <= 48 * MAX_COLS);
        assert!(svg.len() < 4_000_000, "{} bytes", svg.len());
    }

    #[test]
    fn scatter_has_every_run_mean_and_error_bar() {
        let series = vec![
            ScatterSeries {
                label: "none".into(),
                points: vec![(2.4, 5.0), (2.4, 5.1)],
                mean: (2.4, 5.05),
                err: (0.0, 0.07),
            },
            ScatterSeries {
                label: "dyn <a>".into(),
                points: vec![(0.6, 5.4), (0.8, 5.6), (f64::NAN, 1.0)],
                mean: (0.7, 5.5),
                err: (0.14, 0.14),
            },
        ];
        let svg = render_scatter("t", "x", "y", &series);
        balanced_tags(&svg).unwrap();
        assert_eq!(svg.matches("class=\"run\"").count(), 4);
        assert_eq!(svg.matches("class=\"mean\"").count(), 2);
        assert_eq!(svg.matches("class=\"errorbar\"").count(), 2);
        assert!(svg.contains("dyn &lt;a&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let empty = render_scatter("t", "x", "y", &[]);
        balanced_tags(&empty).unwrap();
        assert!(empty.contains("no data"));
    }

    #[test]
    fn ties_figure_has_the_unique_blocks_and_the_heatmap() {
        let (_, _, ties) = sample(6, 40);
        let svg = render_ties_svg("ties", &ties);
        balanced_tags(&svg).unwrap();
        assert!(svg.contains("id=\"unique-blocks\"") && svg.contains("id=\"tie-heatmap\""));
        assert!(!svg.contains("id=\"train-loss\""));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            log_ticks(15.0, 600.0),
            vec![20.0, 50.0, 100.0, 200.0, 500.0]
        );
    }
}
