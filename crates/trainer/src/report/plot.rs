//! The report's figures: PNG files drawn with `plotters`' bitmap backend and pure-Rust text
//! (`ab_glyph`, DejaVu Sans embedded from `assets/fonts/`), so no system library is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::claims::{second_order_ratios, Evaluation};
use super::data::RunData;
use super::stats::Spread;
use super::{ReportError, Result};
use crate::config::OptimizerKind;

/// Train and test loss and test accuracy per optimizer.
pub const FIG_CURVES: &str = "fig1-curves.png";
/// Test accuracy against wall time.
pub const FIG_TIME: &str = "fig2-accuracy-vs-time.png";
/// Token spread (mean cosine, ε-clusters) against depth.
pub const FIG_TOKENS: &str = "fig3-token-spread.png";
/// LayerNorm radius, measured and predicted.
pub const FIG_RADIUS: &str = "fig4-layernorm-radius.png";
/// Attention entropy, |λ₂| and doubly-stochastic deviation.
pub const FIG_ATTENTION: &str = "fig5-attention-kernel.png";
/// MSD on both clocks.
pub const FIG_MSD: &str = "fig6-msd.png";
/// Second-order ratio per layer.
pub const FIG_SECOND_ORDER: &str = "fig7-second-order.png";
/// CG iterations.
pub const FIG_CG: &str = "fig8-cg-iterations.png";
/// Steps per second and optimizer state.
pub const FIG_COST: &str = "fig9-cost.png";

/// A figure written by [`draw_all`], with its caption for the report.
#[derive(Debug, Clone)]
pub struct Figure {
    pub file: &'static str,
    pub caption: String,
}

static FONT: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType file committed with the crate; registration only fails
        // on an invalid font, which the report's test would catch at once (every figure has text).
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const W: u32 = 1400;

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Line,
    Dashed,
    Points,
}

struct Series {
    label: Option<String>,
    color: RGBColor,
    style: Style,
    points: Vec<(f64, f64)>,
}

impl Series {
    fn new(
        label: impl Into<String>,
        color: RGBColor,
        style: Style,
        points: Vec<(f64, f64)>,
    ) -> Self {
        Self {
            label: Some(label.into()),
            color,
            style,
            points,
        }
    }
    fn unlabelled(color: RGBColor, style: Style, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: None,
            color,
            style,
            points,
        }
    }
}

#[derive(Default)]
struct Panel {
    title: String,
    x: String,
    y: String,
    log_x: bool,
    log_y: bool,
    series: Vec<Series>,
    /// Text shown in the middle of an empty panel.
    empty_note: Option<String>,
    x_names: Option<Vec<String>>,
    /// Fixed x range (otherwise the data's, padded).
    x_range: Option<(f64, f64)>,
    /// Start the y axis at 0.
    y_zero: bool,
    /// Label only integer x ticks (epochs, depths).
    int_x: bool,
    legend: Legend,
}

#[derive(Default, Clone, Copy)]
enum Legend {
    #[default]
    UpperRight,
    UpperLeft,
    LowerRight,
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

fn opt_color(o: OptimizerKind) -> RGBColor {
    match o {
        OptimizerKind::Adamw => color(0),
        OptimizerKind::Kfac => color(1),
        OptimizerKind::Cgfac => color(2),
        OptimizerKind::Sgd => color(3),
    }
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5 * lo.abs().max(1e-3)
    };
    Some((lo - pad, hi + pad))
}

fn draw_panel<'a>(
    area: &DrawingArea<BitMapBackend<'a>, Shift>,
    p: &Panel,
    path: &Path,
) -> Result<()> {
    let tx = |v: f64| if p.log_x { v.log10() } else { v };
    let ty = |v: f64| if p.log_y { v.log10() } else { v };
    let ok = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let pts: Vec<Vec<(f64, f64)>> = p
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(x, y)| ok(*x, p.log_x) && ok(*y, p.log_y))
                .map(|(x, y)| (tx(*x), ty(*y)))
                .collect()
        })
        .collect();
    let xr = p
        .x_range
        .or_else(|| bounds(pts.iter().flatten().map(|p| p.0)))
        .unwrap_or((0.0, 1.0));
    let mut yr = bounds(pts.iter().flatten().map(|p| p.1)).unwrap_or((0.0, 1.0));
    if p.y_zero {
        yr = (0.0, yr.1.max(1e-9));
    }
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
        .map_err(|e| plot_err(path, e))?;
    let fmt_log = |v: &f64| {
        // Three significant digits of 10^v.
        let x = 10f64.powf(*v);
        if (0.01..10000.0).contains(&x) {
            let digits = (2 - x.log10().floor() as i32).max(0) as usize;
            let s = format!("{x:.digits$}");
            if s.contains('.') {
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                s
            }
        } else {
            format!("{x:.1e}")
        }
    };
    let fmt_int = |v: &f64| {
        if (v - v.round()).abs() < 1e-9 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    let fmt_lin = |v: &f64| {
        let a = v.abs();
        if a != 0.0 && !(1e-3..1e5).contains(&a) {
            format!("{v:.1e}")
        } else {
            let s = format!("{v:.4}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    };
    let names = p.x_names.clone();
    let fmt_name = move |v: &f64| {
        let i = v.round();
        match &names {
            Some(n) if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n.len() => {
                n[i as usize].clone()
            }
            Some(_) => String::new(),
            None => String::new(),
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(p.x.as_str())
        .y_desc(p.y.as_str())
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17));
    if p.x_names.is_some() {
        mesh.x_label_formatter(&fmt_name);
    } else if p.log_x {
        mesh.x_label_formatter(&fmt_log);
    } else if p.int_x {
        mesh.x_label_formatter(&fmt_int);
    } else {
        mesh.x_label_formatter(&fmt_lin);
    }
    if p.log_y {
        mesh.y_label_formatter(&fmt_log);
    } else {
        mesh.y_label_formatter(&fmt_lin);
    }
    mesh.draw().map_err(|e| plot_err(path, e))?;
    let mut labelled = false;
    for (s, pts) in p.series.iter().zip(pts) {
        let c = s.color;
        let anno = match s.style {
            Style::Line => chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?,
            Style::Dashed => chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, c.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?,
            Style::Points => chart
                .draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled())))
                .map_err(|e| plot_err(path, e))?,
        };
        if let Some(l) = &s.label {
            labelled = true;
            let style = s.style;
            // The legend draws a solid stroke for dashed series too: the label says so.
            let text = if style == Style::Dashed {
                format!("{l} (dashed)")
            } else {
                l.clone()
            };
            anno.label(text).legend(
                move |(x, y)| -> DynElement<'static, BitMapBackend<'a>, (i32, i32)> {
                    match style {
                        Style::Points => Circle::new((x + 10, y), 4, c.filled()).into_dyn(),
                        Style::Line | Style::Dashed => {
                            PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                                .into_dyn()
                        }
                    }
                },
            );
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(match p.legend {
                Legend::UpperRight => SeriesLabelPosition::UpperRight,
                Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
                Legend::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    if let Some(note) = &p.empty_note {
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            note.clone(),
            (w as i32 / 6, h as i32 / 2),
            ("sans-serif", 24).into_font().color(&RED),
        ))
        .map_err(|e| plot_err(path, e))?;
    }
    Ok(())
}

/// Draws `panels` on a grid of `cols` columns under `title` into `dir/file`.
fn figure(dir: &Path, file: &str, title: &str, cols: usize, panels: &[Panel]) -> Result<()> {
    register_font();
    let path = dir.join(file);
    let rows = panels.len().div_ceil(cols).max(1);
    let h = 60 + rows as u32 * if cols == 1 { 520 } else { 440 };
    let root = BitMapBackend::new(&path, (W, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&path, e))?;
    let root = root
        .titled(title, ("sans-serif", 28))
        .map_err(|e| plot_err(&path, e))?;
    let areas = root.split_evenly((rows, cols));
    for (a, p) in areas.iter().zip(panels) {
        draw_panel(a, p, &path)?;
    }
    root.present().map_err(|e| plot_err(&path, e))?;
    Ok(())
}

fn by_opt(runs: &[RunData]) -> BTreeMap<String, Vec<&RunData>> {
    let mut m: BTreeMap<String, Vec<&RunData>> = BTreeMap::new();
    for r in runs {
        m.entry(r.optimizer.to_string()).or_default().push(r);
    }
    m
}

/// Mean over runs of `f(epoch record)` at each epoch index present in every run.
fn epoch_mean(runs: &[&RunData], f: impl Fn(&super::data::EpochRecord) -> f64) -> Vec<(f64, f64)> {
    let n = runs.iter().map(|r| r.epochs.len()).min().unwrap_or(0);
    (0..n)
        .filter_map(|i| {
            let v: Vec<f64> = runs.iter().map(|r| f(&r.epochs[i])).collect();
            Some((runs[0].epochs[i].epoch as f64, Spread::of(&v)?.mean))
        })
        .collect()
}

fn curves(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let mut loss = Panel {
        title: "Loss (mean over seeds)".into(),
        x: "epoch".into(),
        int_x: true,
        y: "cross-entropy".into(),
        log_y: true,
        ..Default::default()
    };
    let mut acc = Panel {
        title: "Test accuracy (mean over seeds)".into(),
        x: "epoch".into(),
        int_x: true,
        y: "test accuracy".into(),
        ..Default::default()
    };
    for (name, rs) in by_opt(runs) {
        let c = opt_color(rs[0].optimizer);
        loss.series.push(Series::new(
            format!("{name} train"),
            c,
            Style::Line,
            epoch_mean(&rs, |e| e.train_loss),
        ));
        loss.series.push(Series::new(
            format!("{name} test"),
            c,
            Style::Dashed,
            epoch_mean(&rs, |e| e.test_loss),
        ));
        acc.series.push(Series::new(
            name,
            c,
            Style::Line,
            epoch_mean(&rs, |e| e.test_accuracy),
        ));
    }
    figure(
        dir,
        FIG_CURVES,
        "W1: training and test curves per optimizer",
        2,
        &[loss, acc],
    )?;
    Ok(Figure {
        file: FIG_CURVES,
        caption:
            "Train (solid) and test (dashed) loss, and test accuracy, per epoch, mean over seeds."
                .into(),
    })
}

fn accuracy_vs_time(runs: &[RunData], eval: &Evaluation, dir: &Path) -> Result<Figure> {
    let mut p = Panel {
        title: format!(
            "Test accuracy against wall time (each run; grey line: a* = {:.2})",
            eval.target
        ),
        x: "wall seconds (training + diagnostics)".into(),
        y: "test accuracy".into(),
        ..Default::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut t_max: f64 = 0.0;
    for r in runs {
        let pts: Vec<(f64, f64)> = r
            .epochs
            .iter()
            .map(|e| (e.wall_seconds, e.test_accuracy))
            .collect();
        t_max = t_max.max(pts.iter().map(|p| p.0).fold(0.0, f64::max));
        let c = opt_color(r.optimizer);
        if seen.insert(r.optimizer.to_string()) {
            p.series
                .push(Series::new(r.optimizer.to_string(), c, Style::Line, pts));
        } else {
            p.series.push(Series::unlabelled(c, Style::Line, pts));
        }
    }
    p.series.push(Series::new(
        format!("target a* = {:.2}", eval.target),
        RGBColor(120, 120, 120),
        Style::Dashed,
        vec![(0.0, eval.target), (t_max, eval.target)],
    ));
    p.legend = Legend::LowerRight;
    figure(
        dir,
        FIG_TIME,
        "W1: test accuracy against wall time",
        1,
        &[p],
    )?;
    Ok(Figure {
        file: FIG_TIME,
        caption: format!(
            "Test accuracy after each epoch against cumulative wall time, one line per run; the dashed line is the target a* = {:.2} of claim 5.",
            eval.target
        ),
    })
}

fn token_spread(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let mut cos = Panel {
        title: "Mean pairwise cosine of an image's tokens".into(),
        x: "depth (0 = embedding, k = after block k)".into(),
        int_x: true,
        legend: Legend::LowerRight,
        y: "mean cosine".into(),
        ..Default::default()
    };
    let mut cl = Panel {
        title: "Mean number of ε-clusters (ε = 0.01) of 17 tokens".into(),
        x: "depth (0 = embedding, k = after block k)".into(),
        int_x: true,
        legend: Legend::LowerRight,
        y: "clusters".into(),
        ..Default::default()
    };
    for (name, rs) in by_opt(runs) {
        let c = opt_color(rs[0].optimizer);
        for (which, style, pick) in [
            ("first epoch", Style::Dashed, 0usize),
            ("last epoch", Style::Line, 1),
        ] {
            let get = |f: &dyn Fn(&super::data::ClusterRecord) -> f64| -> Vec<(f64, f64)> {
                let recs: Vec<_> = rs
                    .iter()
                    .filter_map(|r| {
                        if pick == 0 {
                            r.epochs.first()
                        } else {
                            r.epochs.last()
                        }
                    })
                    .collect();
                let depth = recs.iter().map(|e| e.clusters.len()).min().unwrap_or(0);
                (0..depth)
                    .filter_map(|d| {
                        let v: Vec<f64> = recs.iter().map(|e| f(&e.clusters[d])).collect();
                        Some((d as f64, Spread::of(&v)?.mean))
                    })
                    .collect()
            };
            cos.series.push(Series::new(
                format!("{name}, {which}"),
                c,
                style,
                get(&|c| c.mean_cosine),
            ));
            cl.series.push(Series::new(
                format!("{name}, {which}"),
                c,
                style,
                get(&|c| c.mean_clusters),
            ));
        }
    }
    figure(
        dir,
        FIG_TOKENS,
        "Claim 1: tokens stay spread over depth (mean over seeds)",
        2,
        &[cos, cl],
    )?;
    Ok(Figure {
        file: FIG_TOKENS,
        caption: format!(
            "Residual-stream tokens of the probe images against depth, first (dashed) and last (solid) epoch: a mean cosine below {} and more than one cluster mean the tokens are not one point.",
            super::claims::COLLAPSE_COSINE
        ),
    })
}

fn radius(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let adamw: Vec<&RunData> = runs
        .iter()
        .filter(|r| r.optimizer == OptimizerKind::Adamw)
        .collect();
    let rs: Vec<&RunData> = if adamw.is_empty() {
        runs.iter().collect()
    } else {
        adamw
    };
    let names: Vec<String> = rs
        .first()
        .and_then(|r| r.epochs.first())
        .map(|e| e.layer_norms.keys().cloned().collect())
        .unwrap_or_default();
    let mut rad = Panel {
        title: "Radius / √n: measured (line) vs predicted √(1+ε/σ²)⁻¹ (dots)".into(),
        x: "epoch".into(),
        int_x: true,
        y: "mean radius / √n".into(),
        ..Default::default()
    };
    let mut dev = Panel {
        title: format!(
            "Largest relative deviation (support below {:.0e})",
            super::claims::SPHERE_SUPPORT
        ),
        x: "epoch".into(),
        int_x: true,
        y: "max |r − r_pred| / r_pred".into(),
        log_y: true,
        ..Default::default()
    };
    for (i, n) in names.iter().enumerate() {
        let c = color(i);
        let get = |f: &dyn Fn(&super::data::LnRecord) -> f64| {
            epoch_mean(&rs, |e| e.layer_norms.get(n).map_or(f64::NAN, f))
        };
        rad.series.push(Series::new(
            n.clone(),
            c,
            Style::Line,
            get(&|l| l.radius_mean),
        ));
        rad.series.push(Series::unlabelled(
            c,
            Style::Points,
            get(&|l| l.predicted_radius_mean),
        ));
        dev.series.push(Series::new(
            n.clone(),
            c,
            Style::Line,
            get(&|l| l.max_relative_deviation),
        ));
    }
    let xmax = rs.first().map_or(1.0, |r| r.epochs.len() as f64);
    dev.series.push(Series::new(
        "threshold",
        RGBColor(0, 0, 0),
        Style::Dashed,
        vec![
            (1.0, super::claims::SPHERE_SUPPORT),
            (xmax, super::claims::SPHERE_SUPPORT),
        ],
    ));
    figure(
        dir,
        FIG_RADIUS,
        "Claim 2: LayerNorm output (pre-affine) on the sphere, AdamW runs, mean over seeds",
        2,
        &[rad, dev],
    )?;
    Ok(Figure {
        file: FIG_RADIUS,
        caption: "Per LayerNorm: the measured mean token radius (lines) and the MATH §1 prediction (dots) over training; right, the largest relative deviation of any token against the support threshold (dashed).".into(),
    })
}

fn attention(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let groups = by_opt(runs);
    let mut panels = Vec::new();
    type Pick = fn(&super::data::HeadRecord) -> f64;
    let metrics: [(&str, &str, Pick); 3] = [
        ("row entropy H (nats)", "H", |h| h.row_entropy_mean),
        ("|λ₂|", "|λ₂|", |h| h.lambda2_abs),
        (
            "doubly-stochastic deviation ‖Pᵀ1 − 1‖",
            "dev",
            |h| h.doubly_stochastic_deviation,
        ),
    ];
    for (mname, _, f) in metrics {
        for (oname, rs) in &groups {
            let blocks: Vec<String> = rs[0]
                .epochs
                .first()
                .map(|e| e.markov.keys().cloned().collect())
                .unwrap_or_default();
            let mut p = Panel {
                title: format!("{oname}: {mname}"),
                x: "epoch".into(),
                int_x: true,
                y: mname.into(),
                ..Default::default()
            };
            for (i, b) in blocks.iter().enumerate() {
                let pts = epoch_mean(rs, |e| {
                    e.markov.get(b).map_or(f64::NAN, |hs| {
                        if hs.is_empty() {
                            f64::NAN
                        } else {
                            hs.iter().map(f).sum::<f64>() / hs.len() as f64
                        }
                    })
                });
                p.series
                    .push(Series::new(b.clone(), color(i), Style::Line, pts));
            }
            panels.push(p);
        }
    }
    let cols = groups.len().max(1);
    figure(
        dir,
        FIG_ATTENTION,
        "Claim 3: attention kernel per block over training (head mean, mean over seeds)",
        cols,
        &panels,
    )?;
    Ok(Figure {
        file: FIG_ATTENTION,
        caption: "Rows: mean row entropy, second eigenvalue modulus |λ₂| and doubly-stochastic deviation of the attention kernels (mean over heads and seeds) per block; columns: optimizers.".into(),
    })
}

/// `log K` of `MSD = K τ^α` by least squares with α fixed.
fn intercept(msd: &[(f64, f64)], alpha: f64) -> Option<f64> {
    let v: Vec<f64> = msd
        .iter()
        .filter(|(t, m)| *t > 0.0 && *m > 0.0)
        .map(|(t, m)| m.ln() - alpha * t.ln())
        .collect();
    Spread::of(&v).map(|s| s.mean)
}

fn msd(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let mut panels = Vec::new();
    for (oname, rs) in by_opt(runs) {
        let r = rs[0];
        let mut depth = Panel {
            title: format!("{}: depth clock", r.label()),
            x: "lag τ (blocks)".into(),
            legend: Legend::UpperLeft,
            y: "MSD (geodesic)".into(),
            log_x: true,
            log_y: true,
            ..Default::default()
        };
        let mut train = Panel {
            title: format!("{}: training clock, per LayerNorm", r.label()),
            x: "lag τ (snapshots)".into(),
            legend: Legend::LowerRight,
            y: "MSD".into(),
            log_x: true,
            log_y: true,
            ..Default::default()
        };
        let add = |p: &mut Panel, name: &str, f: &super::data::ClockFit, c: RGBColor| {
            p.series.push(Series::new(
                format!("{name} α = {:.2}", f.alpha),
                c,
                Style::Points,
                f.msd.clone(),
            ));
            if let Some(k) = intercept(&f.msd, f.alpha) {
                let fit = f
                    .msd
                    .iter()
                    .map(|(t, _)| (*t, (k + f.alpha * t.ln()).exp()))
                    .collect();
                p.series.push(Series::unlabelled(c, Style::Line, fit));
            }
        };
        if let Some(f) = &r.depth {
            add(&mut depth, "fit", f, opt_color(r.optimizer));
            if let (Some(k), Some(&(t0, _))) = (intercept(&f.msd, 1.0), f.msd.first()) {
                let t1 = f.msd.last().map_or(t0, |p| p.0);
                depth.series.push(Series::new(
                    "slope 1 (Brownian)",
                    RGBColor(0, 0, 0),
                    Style::Dashed,
                    vec![(t0, (k + t0.ln()).exp()), (t1, (k + t1.ln()).exp())],
                ));
            }
        } else {
            depth.empty_note = Some("not measured".into());
        }
        let mut any = false;
        let mut ref_msd: Vec<(f64, f64)> = Vec::new();
        for (i, (ln, fit)) in r.training.iter().enumerate() {
            if let Ok(f) = fit {
                any = true;
                add(&mut train, ln, f, color(i));
                ref_msd.extend(f.msd.iter().copied());
            }
        }
        if any {
            if let Some(k) = intercept(&ref_msd, 1.0) {
                let (t0, t1) = ref_msd
                    .iter()
                    .fold((f64::INFINITY, 0.0f64), |(a, b), (t, _)| {
                        (a.min(*t), b.max(*t))
                    });
                train.series.push(Series::new(
                    "slope 1 (Brownian)",
                    RGBColor(0, 0, 0),
                    Style::Dashed,
                    vec![(t0, (k + t0.ln()).exp()), (t1, (k + t1.ln()).exp())],
                ));
            }
        } else {
            train.empty_note = Some("not measured (too few snapshots)".into());
        }
        let _ = oname;
        panels.push(depth);
        panels.push(train);
    }
    figure(
        dir,
        FIG_MSD,
        "Claim 4: mean squared displacement on log-log axes (first seed of each optimizer)",
        2,
        &panels,
    )?;
    Ok(Figure {
        file: FIG_MSD,
        caption: "MSD against lag on log-log axes: dots measured, solid lines the fitted power law τ^α (α in the legend), dashed the Brownian slope 1. Left: depth clock; right: training clock, one colour per LayerNorm.".into(),
    })
}

fn second_order(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let measured = runs.iter().any(|r| !r.second_order.is_empty());
    let groups = by_opt(runs);
    let mut panels = Vec::new();
    let mut cols = 1;
    if !measured {
        panels.push(Panel {
            title: "second-order / first-order ratio".into(),
            x: "step".into(),
            y: "|second| / |first|".into(),
            empty_note: Some("not measured: the runs hold no second-order records".into()),
            ..Default::default()
        });
    } else {
        // Per optimizer, layer → step → ratios over seeds; layers are `<block>.<kind>`.
        let mut per: BTreeMap<String, BTreeMap<String, BTreeMap<usize, Vec<f64>>>> =
            BTreeMap::new();
        let mut blocks = std::collections::BTreeSet::new();
        for (oname, rs) in &groups {
            let m = per.entry(oname.clone()).or_default();
            for r in rs {
                for rec in &r.second_order {
                    for (k, (f, s)) in &rec.layers {
                        if f.abs() > 0.0 {
                            blocks
                                .insert(k.rsplit_once('.').map_or(k.as_str(), |x| x.0).to_string());
                            m.entry(k.clone())
                                .or_default()
                                .entry(rec.step)
                                .or_default()
                                .push(s.abs() / f.abs());
                        }
                    }
                }
            }
        }
        cols = groups.len().max(1);
        for block in &blocks {
            for (oname, rs) in &groups {
                let mut p = Panel {
                    title: format!("{oname}, {block}"),
                    x: "step".into(),
                    y: "|second| / |first|".into(),
                    log_y: true,
                    legend: Legend::LowerRight,
                    ..Default::default()
                };
                let med: BTreeMap<String, f64> = rs
                    .first()
                    .map(|r| second_order_ratios(r))
                    .unwrap_or_default();
                let layers = per.get(oname.as_str()).cloned().unwrap_or_default();
                let mut s_range = (usize::MAX, 0usize);
                for (i, (layer, steps)) in layers
                    .iter()
                    .filter(|(k, _)| k.rsplit_once('.').map_or(k.as_str(), |x| x.0) == block)
                    .enumerate()
                {
                    let pts: Vec<(f64, f64)> = steps
                        .iter()
                        .filter_map(|(s, v)| Some((*s as f64, super::stats::median(v)?)))
                        .collect();
                    for st in steps.keys() {
                        s_range = (s_range.0.min(*st), s_range.1.max(*st));
                    }
                    let short = layer.rsplit_once('.').map_or(layer.as_str(), |x| x.1);
                    let label = match med.get(layer) {
                        Some(m) => format!("{short} (median {m:.1e})"),
                        None => short.to_string(),
                    };
                    p.series
                        .push(Series::new(label, color(i), Style::Line, pts));
                }
                if s_range.0 <= s_range.1 {
                    p.series.push(Series::new(
                        "support threshold",
                        RGBColor(0, 0, 0),
                        Style::Dashed,
                        vec![
                            (s_range.0 as f64, super::claims::SECOND_ORDER_SUPPORT),
                            (s_range.1 as f64, super::claims::SECOND_ORDER_SUPPORT),
                        ],
                    ));
                } else {
                    p.empty_note = Some("not measured".into());
                }
                panels.push(p);
            }
        }
    }
    figure(
        dir,
        FIG_SECOND_ORDER,
        "Claim 4b: second-order term / first-order term of the loss change, per layer (rows: blocks)",
        cols,
        &panels,
    )?;
    Ok(Figure {
        file: FIG_SECOND_ORDER,
        caption: if measured {
            "Per tracked layer (rows: blocks; columns: optimizers), the ratio |½⟨ΔW, G ΔW A⟩| / |⟨∇W, ΔW⟩| of the second- to the first-order term of the loss change at each measured step, median over seeds, log scale; legend: the layer's median over steps (first seed); dashed: the support threshold of claim 4b.".into()
        } else {
            "Not measured: the runs hold no second-order records.".into()
        },
    })
}

fn cg_iterations(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let mut p = Panel {
        title: "CG-FAC: mean CG iterations per layer at each logged step".into(),
        x: "step".into(),
        y: "CG iterations (mean over layers)".into(),
        y_zero: true,
        ..Default::default()
    };
    let cap = crate::kfac::KfacSettings::defaults(OptimizerKind::Cgfac).cg_max_iters as f64;
    let mut s_max: f64 = 0.0;
    for (i, r) in runs
        .iter()
        .filter(|r| r.optimizer == OptimizerKind::Cgfac)
        .enumerate()
    {
        let pts: Vec<(f64, f64)> = r
            .cg_iterations
            .iter()
            .map(|(s, it)| (*s as f64, *it))
            .collect();
        s_max = s_max.max(pts.iter().map(|p| p.0).fold(0.0, f64::max));
        p.series
            .push(Series::new(r.label(), color(i), Style::Line, pts));
    }
    if p.series.is_empty() || s_max == 0.0 {
        p.empty_note = Some("not measured: no CG-FAC step records".into());
    } else {
        p.series.push(Series::new(
            "iteration cap",
            RGBColor(0, 0, 0),
            Style::Dashed,
            vec![(0.0, cap), (s_max, cap)],
        ));
    }
    figure(
        dir,
        FIG_CG,
        "CG-FAC: conjugate-gradient iterations over training",
        1,
        &[p],
    )?;
    Ok(Figure {
        file: FIG_CG,
        caption: "Mean number of CG iterations per preconditioned layer at each logged step of the CG-FAC runs; dashed: the iteration cap.".into(),
    })
}

fn cost(runs: &[RunData], dir: &Path) -> Result<Figure> {
    let order = [
        OptimizerKind::Adamw,
        OptimizerKind::Kfac,
        OptimizerKind::Cgfac,
    ];
    let names: Vec<String> = order.iter().map(|o| o.to_string()).collect();
    let mut sps = Panel {
        title: "Training steps per second (one dot per seed)".into(),
        // The dots sit near the top of both panels (the y axes start at 0).
        legend: Legend::LowerRight,
        x: "optimizer".into(),
        y: "steps / s".into(),
        x_names: Some(names.clone()),
        x_range: Some((-0.5, 2.5)),
        y_zero: true,
        ..Default::default()
    };
    let mut mem = Panel {
        title: "Optimizer state in the checkpoint".into(),
        legend: Legend::LowerRight,
        x: "optimizer".into(),
        y: "MiB".into(),
        x_names: Some(names),
        x_range: Some((-0.5, 2.5)),
        y_zero: true,
        ..Default::default()
    };
    for (i, o) in order.iter().enumerate() {
        let rs: Vec<&RunData> = runs.iter().filter(|r| r.optimizer == *o).collect();
        let c = opt_color(*o);
        let jitter = |k: usize| i as f64 + 0.06 * (k as f64 - (rs.len() as f64 - 1.0) / 2.0);
        sps.series.push(Series::new(
            o.to_string(),
            c,
            Style::Points,
            rs.iter()
                .enumerate()
                .map(|(k, r)| (jitter(k), r.steps_per_second))
                .collect(),
        ));
        mem.series.push(Series::new(
            o.to_string(),
            c,
            Style::Points,
            rs.iter()
                .enumerate()
                .map(|(k, r)| (jitter(k), r.optimizer_state_bytes as f64 / (1 << 20) as f64))
                .collect(),
        ));
    }
    figure(
        dir,
        FIG_COST,
        "Claim 6: cost of the optimizers",
        2,
        &[sps, mem],
    )?;
    Ok(Figure {
        file: FIG_COST,
        caption: "Training steps per second of each run and the bytes of optimizer state (moments, Kronecker factors, eigenbases or CG warm starts) in its last checkpoint.".into(),
    })
}

/// Draws every figure into `dir`, in the order of the report.
pub(crate) fn draw_all(runs: &[RunData], eval: &Evaluation, dir: &Path) -> Result<Vec<Figure>> {
    Ok(vec![
        curves(runs, dir)?,
        accuracy_vs_time(runs, eval, dir)?,
        token_spread(runs, dir)?,
        radius(runs, dir)?,
        attention(runs, dir)?,
        msd(runs, dir)?,
        second_order(runs, dir)?,
        cg_iterations(runs, dir)?,
        cost(runs, dir)?,
    ])
}
