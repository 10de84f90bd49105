//! `bench-chart`: draws the peer comparison written by `scripts/bench_peers.py --json`
//! as a PNG: end-to-end messages/s and CPU seconds per 1000 messages, medians per peer,
//! grouped by message size and client.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

#[derive(Deserialize)]
struct Run {
    peer: String,
    client: String,
    size: u64,
    e2e_per_s: f64,
    cpu_s_per_1000: f64,
}

/// Per (size, client) group, per peer: end-to-end rates and CPU costs of its runs.
type Groups = BTreeMap<(u64, String), BTreeMap<String, (Vec<f64>, Vec<f64>)>>;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        bail!("usage: bench-chart RUNS.json OUTPUT.png");
    };
    let runs: Vec<Run> =
        serde_json::from_slice(&std::fs::read(&input).with_context(|| format!("reading {input}"))?)
            .with_context(|| format!("{input} is not the JSON bench_peers.py writes"))?;
    if runs.is_empty() {
        bail!("{input} holds no runs");
    }
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a usable font"))?;

    let mut peers: Vec<String> = Vec::new();
    for r in &runs {
        if !peers.contains(&r.peer) {
            peers.push(r.peer.clone());
        }
    }
    let mut groups: Groups = BTreeMap::new();
    for r in &runs {
        let e = groups
            .entry((r.size, r.client.clone()))
            .or_default()
            .entry(r.peer.clone())
            .or_default();
        e.0.push(r.e2e_per_s);
        e.1.push(r.cpu_s_per_1000);
    }
    let labels: Vec<String> = groups
        .keys()
        .map(|(s, c)| format!("{} KiB, {c}", s / 1024))
        .collect();
    let medians: Vec<Vec<(f64, f64)>> = groups
        .values()
        .map(|per| {
            peers
                .iter()
                .map(|p| {
                    per.get(p)
                        .map(|(e, c)| (median(e.clone()), median(c.clone())))
                        .unwrap_or((f64::NAN, f64::NAN))
                })
                .collect()
        })
        .collect();

    let out = PathBuf::from(output);
    let root = BitMapBackend::new(&out, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    panel(
        &top,
        "End-to-end messages/s (median, log scale; higher is better)",
        &labels,
        &peers,
        &medians,
        |m| m.0,
        SeriesLabelPosition::UpperRight,
    )?;
    panel(
        &bottom,
        "CPU seconds per 1000 messages (median, log scale; lower is better)",
        &labels,
        &peers,
        &medians,
        |m| m.1,
        SeriesLabelPosition::UpperLeft,
    )?;
    root.present()
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    labels: &[String],
    peers: &[String],
    medians: &[Vec<(f64, f64)>],
    pick: impl Fn(&(f64, f64)) -> f64,
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let values: Vec<f64> = medians
        .iter()
        .flatten()
        .map(&pick)
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let max = values.iter().cloned().fold(1.0, f64::max) * 2.0;
    let min = values
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min)
        .min(max / 10.0)
        / 2.0;
    let n = labels.len();
    let width = peers.len() as f64 + 1.0;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..(n as f64 * width), (min..max).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v| {
            if *v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    // Group labels under the axis, centred on each group's bars.
    let (base_x, base_y) = area.get_base_pixel();
    let style =
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (g, label) in labels.iter().enumerate() {
        let centre = g as f64 * width + (width - 1.0) / 2.0;
        let (px, py) = chart.backend_coord(&(centre, min));
        area.draw(&Text::new(
            label.as_str(),
            (px - base_x, py - base_y + 10),
            style.clone(),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    }
    for (pi, peer) in peers.iter().enumerate() {
        let colour = COLOURS[pi % COLOURS.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = medians
            .iter()
            .enumerate()
            .filter_map(|(g, m)| {
                let v = pick(&m[pi]);
                let x0 = g as f64 * width + pi as f64;
                (v.is_finite() && v > 0.0)
                    .then(|| Rectangle::new([(x0 + 0.05, min), (x0 + 0.95, v)], colour.filled()))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e}"))?
            .label(peer.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .position(legend)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
