//! What a training run reports: one line of `metrics.jsonl` per iteration, and the plot of
//! score, KL and entropy per iteration (`metrics.svg`, drawn with plotters).

use super::algo::Algo;
use crate::error::{Error, Result};
use crate::model::checkpoint::write_atomically;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SAMPLES_FILE: &str = "samples.jsonl";
pub const PLOT_FILE: &str = "metrics.svg";

/// One line of metrics.jsonl (docs/design.md §6's keys and more). The value head's figures are
/// PPO's only, the groups' GRPO's and RLOO's: a run without them leaves their keys out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    pub iteration: usize,
    #[serde(default)]
    pub algo: Algo,
    pub score_mean: f32,
    pub score_std: f32,
    /// The fraction of prompts whose completions all scored the same (TRL's frac_reward_zero_std).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frac_reward_zero_std: Option<f32>,
    pub kl_mean: f32,
    pub beta: f32,
    pub lr: f32,
    pub loss: f32,
    pub pg_loss: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_loss: Option<f32>,
    pub entropy: f32,
    pub approx_kl: f32,
    pub clipfrac: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_clipfrac: Option<f32>,
    pub ratio_mean: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explained_variance: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_mean: Option<f32>,
    pub response_len_mean: f32,
    pub tokens_per_s: f32,
    pub time_rollout_s: f32,
    pub time_score_s: f32,
    pub time_update_s: f32,
}

/// The metrics lines of iterations 1..=upto already in `path` (none when it does not exist).
pub fn read_metrics(path: &Path, upto: usize) -> Result<Vec<Metrics>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    Ok(text.lines().filter_map(|l| serde_json::from_str::<Metrics>(l).ok()).filter(|m| m.iteration <= upto).collect())
}

/// Rewrites metrics.jsonl with `history` (a resumed run drops the lines past its checkpoint).
pub fn rewrite_metrics(path: &Path, history: &[Metrics]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m).expect("metrics serialise"));
        text.push('\n');
    }
    write_atomically(path, text.as_bytes())
}

/// One plotted quantity: its title, how to read it from a line of metrics, its colour.
type Series = (&'static str, fn(&Metrics) -> f32, RGBColor);

/// Draws score, KL and entropy per iteration as three stacked line charts in an SVG file.
pub fn plot(metrics: &[Metrics], path: &Path) -> Result<()> {
    let err = |e: String| Error::io(path, std::io::Error::other(e));
    let root = SVGBackend::new(path, (720, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((3, 1));
    let series: [Series; 3] = [
        ("score (reward)", |m| m.score_mean, RGBColor(31, 119, 180)),
        ("KL to the reference (per sequence)", |m| m.kl_mean, RGBColor(214, 39, 40)),
        ("entropy (per token)", |m| m.entropy, RGBColor(44, 160, 44)),
    ];
    let last = metrics.last().map_or(1, |m| m.iteration).max(2);
    for (panel, (title, value, color)) in panels.iter().zip(series) {
        let ys: Vec<f32> = metrics.iter().map(value).filter(|y| y.is_finite()).collect();
        let (lo, hi) = ys.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &y| (lo.min(y), hi.max(y)));
        let (lo, hi) = if ys.is_empty() { (0.0, 1.0) } else { (lo, hi) };
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(1f32..last as f32, (lo - pad)..(hi + pad))
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let points = metrics.iter().map(|m| (m.iteration as f32, value(m))).filter(|p| p.1.is_finite());
        chart.draw_series(LineSeries::new(points, color.stroke_width(2))).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}
